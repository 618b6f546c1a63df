"""A runtime the tests steer (block, raise, hang, run out of memory) beside real ONNX models, and a server
over both through the runtime seam (`InferdServer(config, loaders=...)`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onnx import TensorProto

from inferd import onnx_models
from inferd.config import ServerConfig
from inferd.datatypes import BY_NAME
from inferd.repository.model_config import ModelConfig
from inferd.runtimes.base import ModelSignature, Runtime
from inferd.runtimes.onnx import OnnxRuntime
from inferd.tensors import Array, TensorSpec
from tests.conftest import RunningServer, eventually, start_server

FP32 = BY_NAME["FP32"]
HEALTHY = "healthy"
"""A real ONNX identity model (FP32 [-1, 4], input `input`) served beside the steered ones."""

Mode = Literal["ok", "raise", "hang", "oom"]


@dataclass(eq=False)
class Steered:
    """A runtime (input `x` FP32 [-1, 2], output `y` = 2x) that records the first value of every row it runs,
    in order, and then behaves as `mode` says; `ok` batches wait for `gate` (open by default)."""

    mode: Mode = "ok"
    max_batch_size: int = 4
    gate: threading.Event = field(default_factory=threading.Event)
    unhang: threading.Event = field(default_factory=threading.Event)
    executed: list[float] = field(default_factory=list)
    started: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def __post_init__(self) -> None:
        self.gate.set()
        spec = (TensorSpec("x", FP32, (2,)),)
        self._sig = ModelSignature("test", spec, (TensorSpec("y", FP32, (2,)),), self.max_batch_size)

    @property
    def signature(self) -> ModelSignature:
        return self._sig

    def execute(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        x = inputs["x"]
        self.executed.extend(float(v) for v in x[:, 0])
        self.started.release()
        if self.mode == "raise":
            raise RuntimeError("kernel exploded")
        if self.mode == "oom":
            raise MemoryError("could not allocate 64 GiB")
        if self.mode == "hang":
            self.unhang.wait(60)
        self.gate.wait(60)
        return {"y": x * 2}

    def unload(self) -> None:
        self.unhang.set()
        self.gate.set()


@dataclass
class Repo:
    """Model folders with their config.yaml and, for steered models, the runtimes each load returns."""

    root: Path
    steered: dict[str, list[Steered]] = field(default_factory=dict)
    """Per model: the runtime of every load so far (the last one serves)."""
    factories: dict[str, Callable[[], Steered]] = field(default_factory=dict)

    def add_steered(self, name: str, config: str = "", factory: Callable[[], Steered] = Steered) -> None:
        (self.root / name / "1").mkdir(parents=True)
        (self.root / name / "config.yaml").write_text(config)
        self.factories[name] = factory
        self.steered[name] = []

    def add_healthy(self) -> None:
        onnx_models.identity(self.root / HEALTHY / "1" / "model.onnx", TensorProto.FLOAT, ["batch", 4])
        (self.root / HEALTHY / "config.yaml").write_text("max_batch_size: 8\ndynamic_batching: {}\n")

    def runtime(self, name: str) -> Steered:
        """The runtime the model's last load returned."""
        return self.steered[name][-1]

    def load(self, version_dir: Path, config: ModelConfig) -> Runtime:
        name = version_dir.parent.name
        factory = self.factories.get(name)
        if factory is None:
            return OnnxRuntime.load(version_dir, config)
        runtime = factory()
        self.steered[name].append(runtime)
        return runtime


def serve(repo: Repo, state: Path, **config: Any) -> Iterator[RunningServer]:
    """A server over `repo` (auth off unless `auth=True` is given)."""
    settings: dict[str, Any] = {"auth": False, "http_port": 0, "grpc_port": 0, "shutdown_grace_s": 5.0}
    settings.update(config)
    server_config = ServerConfig(model_repository=str(repo.root), state_dir=str(state), **settings)
    try:
        yield from start_server(server_config, {"onnx": repo.load})
    finally:
        for runtimes in repo.steered.values():
            for runtime in runtimes:
                runtime.unload()


def v2_body(first: float, rows: int = 1) -> dict[str, Any]:
    """A request for a steered model whose rows start with `first`."""
    return {"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "FP32", "data": [first, 1.0] * rows}]}


HEALTHY_BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def in_flight(running: RunningServer, model: str) -> int:
    """Requests of the model's served version queued or running."""
    return running.server.manager.get(model).in_flight


def wait_in_flight(running: RunningServer, model: str, n: int) -> None:
    """Until `n` requests of the model are queued or running."""

    def check() -> None:
        assert in_flight(running, model) == n

    eventually(check)


def index(running: RunningServer) -> dict[str, tuple[str, str]]:
    """`model/version` → (state, reason) from the repository index."""
    return {f"{e.name}/{e.version}": (e.state, e.reason) for e in running.server.manager.index()}
