"""Admission on the tensor path: a model's `max_concurrent_requests` refuses the excess at once (429 with
Retry-After, gRPC RESOURCE_EXHAUSTED) without touching other models; a full queue's Retry-After is the time
its measured drain rate needs for the queue ahead."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inferd.batching.batcher import DynamicBatcher
from inferd.batching.queue import BatchPolicy
from inferd.errors import QueueFull
from tests.overload.helpers import HEALTHY, HEALTHY_BODY, Repo, Steered, serve, v2_body, wait_in_flight


def test_a_model_concurrency_cap_refuses_the_excess_at_once(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "repo")
    repo.add_healthy()
    repo.add_steered(
        "capped", "max_concurrent_requests: 2\ndynamic_batching: {}\n", lambda: Steered(max_batch_size=1)
    )
    for running in serve(repo, tmp_path / "state"):
        runtime = repo.runtime("capped")
        runtime.gate.clear()
        base = f"http://{running.http_url}"
        url = f"{base}/v2/models/capped/infer"
        with ThreadPoolExecutor(4) as pool, httpx.Client(timeout=60) as client:
            running_one = pool.submit(client.post, url, json=v2_body(0.0))
            assert runtime.started.acquire(timeout=10)
            queued_one = pool.submit(client.post, url, json=v2_body(1.0))
            wait_in_flight(running, "capped", 2)
            refused = client.post(url, json=v2_body(2.0))
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert (
                "model 'capped' has 2 requests in flight, its max_concurrent_requests"
                in refused.json()["error"]
            )
            with grpc.insecure_channel(running.grpc_url) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                request = service_pb2.ModelInferRequest(model_name="capped")
                tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
                tensor.contents.fp32_contents.extend([3.0, 1.0])
                with pytest.raises(grpc.RpcError) as err:
                    stub.ModelInfer(request, timeout=60)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            healthy = client.post(f"{base}/v2/models/{HEALTHY}/infer", json=HEALTHY_BODY)
            assert healthy.status_code == 200, "another model's cap does not apply here"
            runtime.gate.set()
            assert running_one.result(60).status_code == 200
            assert queued_one.result(60).status_code == 200
        assert 2.0 not in runtime.executed and 3.0 not in runtime.executed
        assert running.server.dataplane.in_flight == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_queue_full_retry_after_follows_the_measured_drain_rate() -> None:
    clock = FakeClock()
    release = asyncio.Event()

    async def run(items: Sequence[int]) -> list[int]:
        await release.wait()
        clock.now += 0.5 * len(items)  # each request takes 0.5 s of the fake clock: 2 per second
        return list(items)

    policy = BatchPolicy(max_batch_size=0, max_queue_size=4)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(policy, run, clock=clock, name="m")
    release.set()
    assert await batcher.submit(0, rows=1, signature="s") == 0  # one measurement: 2 requests per second
    release.clear()
    waiting = [asyncio.ensure_future(batcher.submit(1, rows=1, signature="s"))]
    while batcher.in_flight == 0 or batcher.queue_depth:  # 1 is running (held by `release`)
        await asyncio.sleep(0)
    waiting += [asyncio.ensure_future(batcher.submit(i, rows=1, signature="s")) for i in range(2, 6)]
    while batcher.queue_depth < 4:
        await asyncio.sleep(0)
    with pytest.raises(QueueFull) as err:
        await batcher.submit(9, rows=1, signature="s")
    # 1 running + 4 queued ahead at 2 per second.
    assert err.value.retry_after_s == pytest.approx(2.5)
    assert "queue full for model 'm': 4 requests waiting" in err.value.message
    release.set()
    assert await asyncio.gather(*waiting) == [1, 2, 3, 4, 5]
    await batcher.close()
