"""The protocol-neutral entry point shared by every transport: inference, readiness, metadata, repository.

Transports reach it through the gateway stage; it asks the model manager for the loaded version. Every
inference or generation call holds a `Slot` while it runs: slots enforce each model's
`max_concurrent_requests`, refuse new work while the server drains, and tell `drain` when the last call
in flight has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from inferd import __version__
from inferd.errors import ModelBusy, NotReady
from inferd.generation import GenerateRequest, GenerationStream
from inferd.qos import QoS
from inferd.repository.llm_version import LLMVersion
from inferd.repository.manager import IndexEntry, ModelManager, ServedVersion
from inferd.repository.model_version import ModelVersion
from inferd.runtimes.embedding_io import PLATFORM as EMBEDDING_PLATFORM
from inferd.tensors import InferRequest, InferResponse

log = logging.getLogger("inferd")

SERVER_NAME = "inferd"
EXTENSIONS = (
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "schedule_policy",
)


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


class Slot:
    """One call's hold on its model's concurrency (release it once; also a context manager)."""

    __slots__ = ("_dataplane", "model", "released")

    def __init__(self, dataplane: DataPlane, model: str) -> None:
        self._dataplane = dataplane
        self.model = model
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._dataplane._release(self.model)

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class DataPlane:
    """Inference and model queries over the model manager."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self._ready = False
        self._draining = False
        self._in_flight: dict[str, int] = {}
        self._total = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready and not self._draining

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def in_flight(self) -> int:
        """Calls holding a slot."""
        return self._total

    # -- admission and draining ----------------------------------------------------------------------

    def admit(self, version: ServedVersion) -> Slot:
        """A slot for one call on `version`'s model: NotReady while the server drains, ModelBusy (retry
        later) when the model's `max_concurrent_requests` are in flight."""
        if self._draining:
            raise NotReady("the server is shutting down and accepts no new requests")
        name = version.name
        held = self._in_flight.get(name, 0)
        cap = version.max_concurrent_requests
        if cap and held >= cap:
            wait = version.retry_after_s(held - cap + 1)
            raise ModelBusy(
                f"model {name!r} has {held} requests in flight, its max_concurrent_requests; retry in "
                f"{wait:.2f}s",
                retry_after_s=wait,
            )
        self._in_flight[name] = held + 1
        self._total += 1
        self._idle.clear()
        return Slot(self, name)

    def _release(self, model: str) -> None:
        left = self._in_flight.get(model, 1) - 1
        if left:
            self._in_flight[model] = left
        else:
            self._in_flight.pop(model, None)
        self._total -= 1
        if not self._total:
            self._idle.set()

    async def drain(self, grace_s: float) -> bool:
        """Refuse new calls, run what is queued without waiting for batches to fill, and wait up to
        `grace_s` for every call in flight to finish; False when some were still running."""
        self._draining = True
        for version in self.manager.ready_versions():
            version.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        return not self._total

    async def abandon(self, wait_s: float) -> None:
        """After the grace period: fail what is still queued or generating and wait up to `wait_s` for the
        calls to settle (their ledger rows)."""
        message = "the server shut down before this request could finish"
        for version in self.manager.served_versions():
            if isinstance(version, ModelVersion):
                version.stop_now(message)
            else:
                await version.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._idle.wait()
        if self._total:
            log.warning("%d requests were still in flight when the server stopped", self._total)

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, EXTENSIONS)

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        """The loaded version (NotFound / NotReady otherwise)."""
        return self.manager.get(name, version)

    def model_exists(self, name: str) -> bool:
        """Whether the repository has a model called `name` (loaded or not)."""
        return self.manager.exists(name)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        return self.model_readiness(name, version)[0]

    def model_readiness(self, name: str, version: str | None = None) -> tuple[bool, str]:
        """Whether the model (version) serves, and why not."""
        if self._draining:
            return False, "the server is shutting down"
        try:
            self.manager.get_any(name, version)
        except Exception as exc:
            return False, getattr(exc, "message", "")
        return True, ""

    def model_versions(self, name: str) -> list[str]:
        return sorted((v.version for v in self.manager.ready_versions() if v.name == name), key=int)

    async def infer(self, request: InferRequest) -> InferResponse:
        version = self.manager.get(request.model, request.version)
        with self.admit(version):
            return await self.infer_on(version, request)

    async def infer_on(
        self, version: ModelVersion, request: InferRequest, qos: QoS | None = None
    ) -> InferResponse:
        """Run `request` on an already resolved version (the caller holds its slot)."""
        return await version.infer(request, qos)

    def llm(self, name: str, version: str | None = None) -> LLMVersion:
        """The loaded LLM version (NotFound for an unknown model or a tensor model; NotReady)."""
        return self.manager.get_llm(name, version)

    def embedding_versions(self) -> list[ModelVersion]:
        """Every ready embedding-model version (listed by the OpenAI API beside the LLMs)."""
        return [v for v in self.manager.ready_versions() if v.signature.platform == EMBEDDING_PLATFORM]

    def llm_versions(self) -> list[LLMVersion]:
        """Every ready LLM version (the OpenAI model list)."""
        return self.manager.llm_versions()

    async def generate(self, request: GenerateRequest) -> GenerationStream:
        """Queue a generation; the stream yields its outputs (close it early to abort). No slot is held:
        callers that must count it (the gateway) use `admit` and `generate_on`."""
        return await self.generate_on(self.llm(request.model, request.version), request)

    async def generate_on(self, version: LLMVersion, request: GenerateRequest) -> GenerationStream:
        """Queue `request` on an already resolved LLM version (the caller holds its slot)."""
        return await version.generate(request)

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        return self.manager.index(ready_only)

    async def load(self, name: str) -> None:
        await self.manager.load(name)

    async def unload(self, name: str) -> None:
        await self.manager.unload(name)

    def statistics(self, name: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        """Triton-shaped statistics of the ready versions (one model, one version, or all)."""
        if name:
            versions = (
                [self.manager.get(name, version)]
                if version
                else [v for v in self.manager.ready_versions() if v.name == name]
            )
            if not versions:
                self.manager.get(name)  # raises NotFound / NotReady
        else:
            versions = self.manager.ready_versions()
        return [v.stats.as_dict(v.name, v.version) for v in versions]
