"""The model manager: loads, unloads and reloads models from the repository, and reports their state.

Control modes (Triton's): `none` loads everything at start and never changes; `explicit` loads what
`--load-model` names (or everything when none is named) and then follows the repository API; `poll` also
rescans the repository and reloads models whose files changed. A model that fails to load is reported with its
reason and never affects the others.

A version that takes itself out of service (hung past `execution_timeout_s`, out of memory, a crashed LLM
engine loop) is reported unready with its reason in the index; the model's `on_failure` policy then reloads
it (at most `max_reloads` times since the last explicit load) or keeps it down. Other models never notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Literal

from inferd.configfile import ConfigError, load_yaml, parse
from inferd.engine.compute_thread import ComputeThread
from inferd.errors import InferdError, InvalidInput, ModelLoadError, NotFound, NotReady
from inferd.metrics.registry import Metrics
from inferd.repository import discovery
from inferd.repository.llm_version import LLMVersion
from inferd.repository.model_config import CONFIG_FILE, ModelConfig, configured_runtime, load_model_config
from inferd.repository.model_version import ModelVersion, warmup
from inferd.runtimes.base import Runtime
from inferd.runtimes.llm import LLMModelConfig, load_llm_versions
from inferd.runtimes.onnx import OnnxRuntime

log = logging.getLogger("inferd.repository")

ControlMode = Literal["none", "explicit", "poll"]
RuntimeLoader = Callable[[Path, ModelConfig], Runtime]
ServedVersion = ModelVersion | LLMVersion
"""A ready version: a tensor model behind its batcher, or an LLM behind its engine."""
_Loaded = tuple[str, ModelConfig, Runtime] | LLMVersion


class ModelState(Enum):
    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: str
    state: str
    reason: str


@dataclass
class _Model:
    name: str
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = ""
    versions: dict[str, ServedVersion] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """Versions out of service after a fault, with the reason."""
    reloads: int = 0
    """Reloads after faults since the last explicit load."""
    fingerprint: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelManager:
    """Owns every loaded model version."""

    def __init__(
        self,
        repository: Path,
        metrics: Metrics,
        control_mode: ControlMode = "none",
        poll_interval_s: float = 5.0,
        loaders: dict[str, RuntimeLoader] | None = None,
    ) -> None:
        self.repository = repository
        self.control_mode = control_mode
        self.poll_interval_s = poll_interval_s
        self._metrics = metrics
        self._compute = ComputeThread()
        """The one thread that runs torch for every model (LLM steps, embedding batches): see its module."""
        self._loaders: dict[str, RuntimeLoader] = loaders or {
            "onnx": OnnxRuntime.load,
            "embedding": functools.partial(_load_embedding, compute=self._compute),
        }
        self._models: dict[str, _Model] = {}
        self._poller: asyncio.Task[None] | None = None
        self._recoveries: set[asyncio.Task[None]] = set()

    async def start(self, load_models: list[str] | None = None) -> None:
        """Load the startup models; start polling when the mode is `poll`."""
        found = discovery.scan(self.repository)
        names = list(load_models) if self.control_mode == "explicit" and load_models else list(found)
        for name in names:
            # A failure is reported in the log and the index; the others keep loading.
            with contextlib.suppress(InferdError):
                await self.load(name)
        if self.control_mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for task in list(self._recoveries):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for name in list(self._models):
            await self.unload(name)
        self._compute.close()

    def served_versions(self) -> list[ServedVersion]:
        """Every version in service, of either kind."""
        return [v for m in self._models.values() for v in m.versions.values()]

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """The ready tensor-model version (the highest when `version` is None). NotFound / NotReady
        otherwise; InvalidInput for an LLM (it is served by the OpenAI API)."""
        found = self.get_any(name, version)
        if not isinstance(found, ModelVersion):
            raise InvalidInput(f"model {name!r} is an LLM: use the OpenAI API (/v1/completions)")
        return found

    def get_llm(self, name: str, version: str | None = None) -> LLMVersion:
        """The ready LLM version; NotFound for a tensor model (it has no OpenAI API)."""
        found = self.get_any(name, version)
        if not isinstance(found, LLMVersion):
            raise NotFound(f"model {name!r} is not a language model")
        return found

    def get_any(self, name: str, version: str | None = None) -> ServedVersion:
        """The ready version of either kind (the highest when `version` is None)."""
        model = self._models.get(name)
        if model is not None:
            self._check_engines(model)
        if model is None or (not model.versions and model.state is not ModelState.LOADING):
            if model is None and not self.exists(name):
                raise NotFound(f"unknown model {name!r}")
            raise NotReady(
                f"model {name!r} is not ready" + (f": {model.reason}" if model and model.reason else "")
            )
        if not model.versions:
            raise NotReady(f"model {name!r} is loading")
        if version is None or version == "":
            return model.versions[max(model.versions, key=int)]
        found = model.versions.get(version)
        if found is None:
            if version in model.failed:
                raise NotReady(f"model {name!r} version {version} is out of service: {model.failed[version]}")
            if not version.isdigit():
                raise InvalidInput(f"model version {version!r} is not a positive integer")
            raise NotFound(f"unknown version {version!r} of model {name!r}")
        return found

    def _check_engines(self, model: _Model) -> None:
        """Report LLM versions whose engine loop died since the last look (nothing else notices a crash
        that happens while no request is waiting)."""
        for served in list(model.versions.values()):
            if isinstance(served, LLMVersion):
                reason = served.fault or served.failure()
                if reason is not None:
                    self._on_fault(served, reason)

    def exists(self, name: str) -> bool:
        """Whether `name` is a model of the repository (loaded or not). Client input: checked first."""
        if name in self._models:
            return True
        if not name or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
            return False
        try:
            return (self.repository / name).is_dir()
        except (OSError, ValueError):  # a name longer than the file system allows is no model
            return False

    def ready_versions(self) -> list[ModelVersion]:
        """Ready tensor-model versions."""
        return [v for m in self._models.values() for v in m.versions.values() if isinstance(v, ModelVersion)]

    def llm_versions(self) -> list[LLMVersion]:
        """Ready LLM versions."""
        return [v for m in self._models.values() for v in m.versions.values() if isinstance(v, LLMVersion)]

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository with its state, loaded or not."""
        entries: list[IndexEntry] = []
        on_disk = discovery.scan(self.repository)
        for name in sorted(set(on_disk) | set(self._models)):
            model = self._models.get(name)
            if model is not None:
                self._check_engines(model)
            if model is not None and (model.versions or model.failed):
                rows = [(v, ModelState.READY.value, "") for v in model.versions]
                if not ready_only:
                    rows += [(v, ModelState.UNAVAILABLE.value, why) for v, why in model.failed.items()]
                entries += [IndexEntry(name, v, state, why) for v, state, why in sorted(rows, key=_by_number)]
            elif not ready_only:
                state = model.state.value if model else ModelState.UNAVAILABLE.value
                reason = model.reason if model else "unloaded"
                entries.append(IndexEntry(name, "", state, reason))
        return entries

    async def load(self, name: str, *, recovering: bool = False) -> None:
        """Load (or reload) every version of `name` its version policy selects; an explicit load (not
        `recovering` from a fault) also resets the count of reloads after faults."""
        model_dir = discovery.scan(self.repository).get(name)
        if model_dir is None:
            raise NotFound(f"unknown model {name!r}: no folder {name!r} in the model repository")
        model = self._models.setdefault(name, _Model(name))
        async with model.lock:
            old = dict(model.versions)
            model.state = ModelState.LOADING if not old else model.state
            model.fingerprint = model_dir.fingerprint()
            try:
                fresh = await asyncio.to_thread(self._load_versions, model_dir)
            except ModelLoadError as exc:
                model.state = ModelState.UNAVAILABLE if not old else model.state
                model.reason = exc.message
                log.error("model %s failed to load: %s", name, exc.message)
                raise
            versions: dict[str, ServedVersion] = {}
            for version, loaded in fresh.items():
                served = (
                    loaded
                    if isinstance(loaded, LLMVersion)
                    else ModelVersion(name, version, *loaded, self._metrics)
                )
                served.on_fault = self._on_fault
                if isinstance(served, LLMVersion):
                    served.watch_engine()
                versions[version] = served
                log.info("model %s version %s loaded (sha256 %s)", name, version, served.sha256[:12])
            model.versions = versions
            model.failed = {}
            if not recovering:
                model.reloads = 0
            model.state = ModelState.READY
            model.reason = ""
        for stale in old.values():
            await stale.close()

    async def unload(self, name: str) -> None:
        """Stop serving `name`; waits for its in-flight requests."""
        model = self._models.get(name)
        if model is None:
            if name not in discovery.scan(self.repository):
                raise NotFound(f"unknown model {name!r}")
            return
        async with model.lock:
            old = list(model.versions.values())
            model.versions = {}
            model.failed = {}
            model.state = ModelState.UNLOADING
            for version in old:
                await version.close()
            model.state = ModelState.UNAVAILABLE
            model.reason = "unloaded"
            log.info("model %s unloaded", name)

    def _load_versions(self, model_dir: discovery.ModelDir) -> dict[str, _Loaded]:
        """Blocking: read config, load runtimes, warm up (runs in a worker thread)."""
        try:
            if configured_runtime(model_dir.path) == "llm":
                return self._load_llm_versions(model_dir)
            config = load_model_config(model_dir.path)
        except ConfigError as exc:
            raise ModelLoadError(str(exc)) from None
        present = model_dir.versions()
        if not present:
            raise ModelLoadError(f"model {model_dir.name!r} has no version folders (1/, 2/, ...)")
        selected = config.version_policy.select(present)
        if not selected:
            raise ModelLoadError(f"version_policy selects none of the versions present {present}")
        loader = self._loaders.get(config.runtime)
        if loader is None:
            raise ModelLoadError(f"runtime {config.runtime!r} is not available")
        loaded: dict[str, _Loaded] = {}
        for number in selected:
            version_dir = model_dir.path / str(number)
            sha = discovery.version_sha256(version_dir)
            try:
                runtime = loader(version_dir, config)
                warmup(runtime, config)
            except ModelLoadError:
                raise
            except Exception as exc:  # a model must never take the server down with it
                raise ModelLoadError(f"version {number}: {type(exc).__name__}: {exc}") from None
            loaded[str(number)] = (sha, config, runtime)
        return loaded

    def _load_llm_versions(self, model_dir: discovery.ModelDir) -> dict[str, _Loaded]:
        """Blocking: parse the LLM config and load each selected version's engine."""
        where = f"{model_dir.name}/{CONFIG_FILE}"
        config = parse(LLMModelConfig, load_yaml(model_dir.path / CONFIG_FILE), where)
        present = model_dir.versions()
        selected = config.version_policy.select(present)
        if not selected:
            raise ModelLoadError(f"model {model_dir.name!r}: no version folder selected (present: {present})")
        versions = [
            (str(n), discovery.version_sha256(model_dir.path / str(n)), model_dir.path / str(n))
            for n in selected
        ]
        try:
            # All selected versions or none: a failure stops the engines already started.
            return dict(load_llm_versions(model_dir.name, versions, config, self._metrics, self._compute))
        except ModelLoadError:
            raise
        except Exception as exc:  # a model must never take the server down with it
            raise ModelLoadError(f"{type(exc).__name__}: {exc}") from None

    # -- faults --------------------------------------------------------------------------------------

    def _on_fault(self, version: ServedVersion, reason: str) -> None:
        """A version took itself out of service: report it unready and apply the model's policy."""
        model = self._models.get(version.name)
        if model is None or model.versions.get(version.version) is not version:
            return
        del model.versions[version.version]
        model.failed[version.version] = reason
        if not model.versions:
            model.state = ModelState.UNAVAILABLE
            model.reason = f"version {version.version} is out of service: {reason}"
        task = asyncio.get_running_loop().create_task(self._recover(model, version, reason))
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    async def _recover(self, model: _Model, version: ServedVersion, reason: str) -> None:
        try:
            await version.discard()
        except Exception:
            log.exception("releasing model %s version %s failed", model.name, version.version)
        if version.on_failure == "stay_down":
            why = f"{reason} (on_failure: stay_down; load the model to serve it again)"
        elif model.reloads >= version.max_reloads:
            why = f"{reason} (gave up after {model.reloads} reloads; load the model to serve it again)"
        else:
            model.reloads += 1
            log.warning("reloading model %s after a fault (reload %d of %d)", model.name, model.reloads,
                        version.max_reloads)  # fmt: skip
            try:
                await self.load(model.name, recovering=True)
                return
            except InferdError as exc:
                why = f"{reason}; reload {model.reloads} failed: {exc.message}"
        if model.failed.get(version.version) is not None:
            model.failed[version.version] = why
        if not model.versions:
            model.state = ModelState.UNAVAILABLE
            model.reason = f"version {version.version} is out of service: {why}"

    # -- polling -------------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            await self.poll_once()

    async def poll_once(self) -> None:
        """Load new models, reload changed ones, unload removed ones."""
        found = discovery.scan(self.repository)
        for name in list(self._models):
            if name not in found:
                await self.unload(name)
                del self._models[name]
        for name, model_dir in found.items():
            model = self._models.get(name)
            if model is None or model.fingerprint != model_dir.fingerprint():
                with contextlib.suppress(InferdError):
                    await self.load(name)


def _by_number(row: tuple[str, str, str]) -> int:
    return int(row[0])


def _load_embedding(version_dir: Path, config: ModelConfig, *, compute: ComputeThread) -> Runtime:
    # torch is imported only when an embedding model is loaded: a tensor-only server stays light (and its
    # garbage collections short).
    from inferd.runtimes.embedding import EmbeddingRuntime

    return compute.call(lambda: EmbeddingRuntime.load(version_dir, config, compute=compute))
