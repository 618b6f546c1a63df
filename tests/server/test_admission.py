"""Queue limits, timeouts and runtime failures as clients see them over REST and gRPC."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd.config import ServerConfig
from inferd.datatypes import BY_NAME
from inferd.repository.model_config import ModelConfig
from inferd.runtimes.base import ModelSignature
from inferd.tensors import Array, TensorSpec
from tests.conftest import RunningServer, start_server

FP32 = BY_NAME["FP32"]


class GatedRuntime:
    """Blocks every batch until released; raises for inputs whose first value is negative."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self._sig = ModelSignature("test", (TensorSpec("x", FP32, (2,)),), (TensorSpec("y", FP32, (2,)),), 4)

    @property
    def signature(self) -> ModelSignature:
        return self._sig

    def execute(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        x = inputs["x"]
        if (x[:, 0] < 0).any():
            raise ValueError("negative input rejected by the kernel")
        self.started.release()
        self.release.wait(20)
        return {"y": x * 2}

    def unload(self) -> None:
        self.release.set()


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[RunningServer, GatedRuntime]]:
    repo = tmp_path / "repo"
    (repo / "gated" / "1").mkdir(parents=True)
    (repo / "gated" / "config.yaml").write_text("max_batch_size: 1\ndynamic_batching:\n  max_queue_size: 1\n")
    (repo / "free" / "1").mkdir(parents=True)
    runtime = GatedRuntime()

    def load(version_dir: Path, config: ModelConfig) -> GatedRuntime:
        return runtime

    config = ServerConfig(
        auth=False, model_repository=str(repo), http_port=0, grpc_port=0, state_dir=str(tmp_path / "s")
    )
    for running in start_server(config, {"onnx": load}):
        yield running, runtime
        runtime.release.set()


def body(first: float, timeout_us: int | None = None) -> dict[str, object]:
    doc: dict[str, object] = {
        "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [first, 1.0]}]
    }
    if timeout_us is not None:
        doc["parameters"] = {"timeout": timeout_us}
    return doc


def test_full_queue_refuses_at_once_and_expired_requests_never_run(
    gated: tuple[RunningServer, GatedRuntime],
) -> None:
    running, runtime = gated
    url = f"http://{running.http_url}/v2/models/gated/infer"
    with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=30) as client:
        executing = pool.submit(client.post, url, json=body(1.0))
        assert runtime.started.acquire(timeout=10)
        queued = pool.submit(client.post, url, json=body(2.0, timeout_us=1_500_000))
        # The queue (size 1) fills; wait until the queued request is counted.
        for _ in range(200):
            text = client.get(f"http://{running.http_url}/metrics").text
            if 'inferd_queue_depth{model="gated",version="1"} 1.0' in text:
                break
            threading.Event().wait(0.01)
        refused = client.post(url, json=body(3.0))
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert "queue full" in refused.json()["error"]

        with grpc.insecure_channel(running.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="gated")
            tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
            tensor.contents.fp32_contents.extend([4.0, 1.0])
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        expired = queued.result(30)
        assert expired.status_code == 504
        assert "deadline exceeded while queued for model 'gated'" in expired.json()["error"]
        runtime.release.set()
        done = executing.result(30)
        assert done.status_code == 200
        assert done.json()["outputs"][0]["data"] == [2.0, 2.0]
    # The expired request never reached the runtime: only one batch started.
    assert not runtime.started.acquire(timeout=0.01)


def test_failing_batch_fails_only_its_request_with_the_runtime_message(
    gated: tuple[RunningServer, GatedRuntime],
) -> None:
    running, runtime = gated
    runtime.release.set()
    url = f"http://{running.http_url}/v2/models/gated/infer"
    with httpx.Client(timeout=30) as client:
        bad = client.post(url, json=body(-1.0))
        assert bad.status_code == 500
        assert "negative input rejected by the kernel" in bad.json()["error"]
        good = client.post(url, json=body(5.0))
        assert good.status_code == 200
        assert np.allclose(good.json()["outputs"][0]["data"], [10.0, 2.0])
        metrics = client.get(f"http://{running.http_url}/metrics").text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    gated_v1 = (("model", "gated"), ("version", "1"))

    def value(name: str, *extra: tuple[str, str]) -> float:
        return samples[(name, tuple(sorted(gated_v1 + extra)))]

    assert value("inferd_requests_total", ("protocol", "http"), ("code", "500")) == 1
    assert value("inferd_requests_total", ("protocol", "http"), ("code", "200")) == 1
    assert value("inferd_model_ready") == 1
    assert value("inferd_request_duration_seconds_count", ("protocol", "http")) == 2
    assert value("inferd_queue_duration_seconds_count") == 2
    assert value("inferd_compute_duration_seconds_count") == 1, "the failing batch recorded no compute"
    assert value("inferd_batch_size_count") == 2
