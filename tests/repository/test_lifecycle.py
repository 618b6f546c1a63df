"""Loading, unloading, reloading and polling, through the repository API and the model manager."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto
from tritonclient.utils import InferenceServerException

from inferd import onnx_models
from inferd.config import ServerConfig
from inferd.datatypes import BY_NAME
from inferd.errors import ModelLoadError, NotFound, NotReady
from inferd.metrics.registry import Metrics
from inferd.repository.manager import ModelManager
from inferd.repository.model_config import ModelConfig
from inferd.runtimes.base import ModelSignature
from inferd.tensors import Array, InferRequest, Tensor, TensorSpec
from tests.conftest import start_server

FP32 = BY_NAME["FP32"]


@pytest.fixture
def repo(model_repo: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "repo"
    for name in ("add_sub", "mlp", "broken_graph", "identity_fp32"):
        shutil.copytree(model_repo / name, dst / name)
    return dst


def test_explicit_load_unload_reload_over_http_and_grpc(repo: Path, tmp_path: Path) -> None:
    config = ServerConfig(
        auth=False,
        model_repository=str(repo),
        http_port=0,
        grpc_port=0,
        state_dir=str(tmp_path / "state"),
        model_control="explicit",
        load_models=["add_sub"],
    )
    for running in start_server(config):
        http = httpclient.InferenceServerClient(running.http_url)
        grpc = grpcclient.InferenceServerClient(running.grpc_url)
        states = {m["name"]: m["state"] for m in http.get_model_repository_index()}
        assert states == {"add_sub": "READY", "mlp": "UNAVAILABLE", "broken_graph": "UNAVAILABLE",
                          "identity_fp32": "UNAVAILABLE"}  # fmt: skip
        assert not http.is_model_ready("mlp")

        http.load_model("mlp")
        assert http.is_model_ready("mlp") and grpc.is_model_ready("mlp")
        sha1 = http.get_model_metadata("mlp")["parameters"]["sha256"]

        grpc.unload_model("mlp")
        assert not http.is_model_ready("mlp")
        with pytest.raises(InferenceServerException) as err:
            http.get_model_metadata("mlp")
        assert err.value.status() == "503"

        # Reload picks up new files and a new identity.
        onnx_models.mlp(repo / "mlp" / "1" / "model.onnx", [16, 32, 4], seed=99)
        grpc.load_model("mlp")
        assert http.get_model_metadata("mlp")["parameters"]["sha256"] != sha1

        with pytest.raises(InferenceServerException) as err:
            http.load_model("broken_graph")
        assert "could not load" in err.value.message()
        assert http.is_model_ready("add_sub"), "a failed load never affects the others"
        with pytest.raises(InferenceServerException) as err:
            http.load_model("does_not_exist")
        assert err.value.status() == "404"
        grpc.close()
        http.close()


class GatedRuntime:
    """A runtime whose execution waits for the test to release it (fault and timing injection)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        spec = TensorSpec("x", FP32, (2,))
        self._sig = ModelSignature("test", (spec,), (TensorSpec("y", FP32, (2,)),), 8)

    @property
    def signature(self) -> ModelSignature:
        return self._sig

    def execute(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        self.started.set()
        self.release.wait(10)
        return {"y": inputs["x"] + 1}

    def unload(self) -> None:
        pass


async def test_unload_waits_for_in_flight_requests(tmp_path: Path) -> None:
    (tmp_path / "gated" / "1").mkdir(parents=True)
    runtime = GatedRuntime()

    def load(version_dir: Path, config: ModelConfig) -> GatedRuntime:
        return runtime

    manager = ModelManager(tmp_path, Metrics(), loaders={"onnx": load})
    await manager.start()
    version = manager.get("gated")
    request = InferRequest("gated", None, [Tensor("x", FP32, np.zeros((1, 2), np.float32))])
    infer = asyncio.ensure_future(version.infer(request))
    await asyncio.to_thread(runtime.started.wait, 10)
    unload = asyncio.ensure_future(manager.unload("gated"))
    await asyncio.sleep(0.05)
    assert not unload.done(), "unload waits while a request is executing"
    with pytest.raises(NotReady):
        manager.get("gated")  # no new requests once unloading began
    runtime.release.set()
    response = await infer
    np.testing.assert_array_equal(response.outputs[0].data, np.ones((1, 2), np.float32))
    await unload
    await manager.stop()


async def test_poll_mode_follows_the_repository(tmp_path: Path) -> None:
    manager = ModelManager(tmp_path, Metrics(), control_mode="poll", poll_interval_s=3600)
    await manager.start()
    assert manager.index() == []
    onnx_models.identity(tmp_path / "m" / "1" / "model.onnx", TensorProto.FLOAT, ["b", 2])
    await manager.poll_once()
    first = manager.get("m")
    assert first.version == "1"
    onnx_models.identity(tmp_path / "m" / "2" / "model.onnx", TensorProto.FLOAT, ["b", 2])
    await manager.poll_once()
    assert manager.get("m").version == "2", "the default policy serves the latest version"
    with pytest.raises(NotFound):
        manager.get("m", "1")
    shutil.rmtree(tmp_path / "m")
    await manager.poll_once()
    with pytest.raises(NotFound):
        manager.get("m")
    await manager.stop()


async def test_declared_inputs_are_checked_against_the_graph(tmp_path: Path) -> None:
    onnx_models.identity(tmp_path / "m" / "1" / "model.onnx", TensorProto.FLOAT, ["b", 2])
    (tmp_path / "m" / "config.yaml").write_text("inputs:\n  - {name: input, datatype: INT64, dims: [2]}\n")
    manager = ModelManager(tmp_path, Metrics())
    with pytest.raises(ModelLoadError, match="INT64 but the graph has FP32"):
        await manager.load("m")
    (tmp_path / "m" / "config.yaml").write_text("inputs:\n  - {name: input, datatype: FP32, dims: [3]}\n")
    with pytest.raises(ModelLoadError, match=r"dims \[3\] do not match"):
        await manager.load("m")
    (tmp_path / "m" / "config.yaml").write_text(
        "inputs:\n  - {name: input, datatype: FP32, dims: [2]}\nwarmup: {batch_sizes: [1, 4], data: random}\n"
    )
    await manager.load("m")
    assert manager.get("m").signature.inputs[0].dims == (2,)
    await manager.stop()
