"""Deadlines on the tensor path: the V2 `timeout` parameter, `x-inferd-timeout-ms` (REST header, gRPC
metadata), a gRPC deadline or the model default. Work that cannot run in time is dropped before it runs, with
a 504 / DEADLINE_EXCEEDED naming the stage; the runtime's record shows it never ran."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd.errors import DeadlineExceeded
from inferd.qos import Deadline, QoS
from inferd.tensors import InferRequest, Tensor
from tests.conftest import RunningServer
from tests.overload.helpers import FP32, Repo, Steered, serve, v2_body, wait_in_flight

GATED = "dynamic_batching: {}\n"
DEFAULTED = "dynamic_batching: {default_timeout_ms: 100}\n"


def one_row() -> Steered:
    return Steered(max_batch_size=1)


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[RunningServer, Repo]]:
    repo = Repo(tmp_path / "repo")
    repo.add_steered("m", GATED, one_row)
    repo.add_steered("d", DEFAULTED, one_row)
    for running in serve(repo, tmp_path / "state"):
        yield running, repo


def grpc_request(first: float, model: str = "m") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([first, 1.0])
    return request


def test_expired_while_queued_never_runs(gated: tuple[RunningServer, Repo]) -> None:
    running, repo = gated
    runtime = repo.runtime("m")
    runtime.gate.clear()
    url = f"http://{running.http_url}/v2/models/m/infer"
    with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=60) as client:
        blocker = pool.submit(client.post, url, json=v2_body(0.0))
        assert runtime.started.acquire(timeout=10)
        late = client.post(url, json=v2_body(1.0), headers={"x-inferd-timeout-ms": "100"})
        assert late.status_code == 504
        message = late.json()["error"]
        assert message.startswith("deadline exceeded while queued for model 'm' (waited ")
        assert message.endswith(" of 100 ms)")
        # The V2 parameter and the header together: the shorter one counts.
        both = {**v2_body(2.0), "parameters": {"timeout": 60_000_000}}
        late = client.post(url, json=both, headers={"x-inferd-timeout-ms": "50"})
        assert late.status_code == 504 and late.json()["error"].endswith(" of 50 ms)")
        with grpc.insecure_channel(running.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(grpc_request(3.0), metadata=(("x-inferd-timeout-ms", "80"),), timeout=60)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "deadline exceeded while queued for model 'm'" in (err.value.details() or "")
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(grpc_request(4.0), timeout=0.2)  # the client's own gRPC deadline
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_in_flight(running, "m", 1)
        bad = client.post(url, json=v2_body(5.0), headers={"x-inferd-timeout-ms": "-3"})
        assert bad.status_code == 400 and "x-inferd-timeout-ms must be" in bad.json()["error"]
        runtime.gate.set()
        assert blocker.result(60).status_code == 200
    assert runtime.executed == [0.0], "no expired request reached the runtime"


def test_the_model_default_timeout_applies_to_requests_without_one(gated: tuple[RunningServer, Repo]) -> None:
    running, repo = gated
    runtime = repo.runtime("d")
    runtime.gate.clear()
    url = f"http://{running.http_url}/v2/models/d/infer"
    with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=60) as client:
        blocker = pool.submit(client.post, url, json=v2_body(0.0))
        assert runtime.started.acquire(timeout=10)
        late = client.post(url, json=v2_body(1.0))
        assert late.status_code == 504 and late.json()["error"].endswith(" of 100 ms)")
        runtime.gate.set()
        assert blocker.result(60).status_code == 200
    assert runtime.executed == [0.0]


def test_a_request_already_expired_is_refused_before_queueing(gated: tuple[RunningServer, Repo]) -> None:
    running, repo = gated
    version = running.server.manager.get("m")
    request = InferRequest("m", None, [Tensor("x", FP32, np.ones((1, 2), np.float32))])
    expired = QoS(deadline=Deadline(start=0.0, budget_s=0.25))
    with pytest.raises(DeadlineExceeded, match=r"before queueing for model 'm' \(waited \d+ ms of 250 ms\)"):
        running.call(version.infer(request, expired))
    assert repo.runtime("m").executed == []
