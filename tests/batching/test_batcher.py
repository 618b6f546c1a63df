"""The asyncio batcher with a plain-Python batch function: scattering, failures, timeouts, full queues."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.batching.assembly import gather_inputs, scatter_outputs
from inferd.batching.batcher import DynamicBatcher
from inferd.batching.queue import BatchPolicy
from inferd.datatypes import BY_NAME
from inferd.errors import DeadlineExceeded, ExecutionFailed, QueueFull
from inferd.tensors import InferRequest, Tensor

FP32 = BY_NAME["FP32"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=10))
def test_gather_then_scatter_returns_each_request_its_rows(rows: list[int]) -> None:
    requests = []
    for i, n in enumerate(rows):
        data = np.full((n, 3), float(i), dtype=np.float32) + np.arange(n, dtype=np.float32)[:, None] / 10
        requests.append(InferRequest("m", None, [Tensor("x", FP32, data)]))
    stacked, counts = gather_inputs(requests)
    assert counts == rows
    parts = scatter_outputs({"y": stacked["x"] * 2}, counts)
    for req, part in zip(requests, parts, strict=True):
        np.testing.assert_array_equal(part["y"], req.inputs[0].data * 2)


async def test_concurrent_requests_each_get_their_own_result() -> None:
    batches: list[int] = []

    async def run(items: Sequence[int]) -> list[int]:
        batches.append(len(items))
        await asyncio.sleep(0.002)
        return [x * 10 for x in items]

    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.002)
    batcher: DynamicBatcher[int, int] = DynamicBatcher(policy, run)
    results = await asyncio.gather(*(batcher.submit(i, rows=1, signature="s") for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert max(batches) <= 8 and sum(batches) == 50
    assert len(batches) < 50, "concurrent requests were batched"
    await batcher.close()


async def test_failing_batch_fails_only_its_requests() -> None:
    async def run(items: Sequence[str]) -> list[str]:
        if "bad" in items:
            raise RuntimeError("kernel exploded")
        return list(items)

    policy = BatchPolicy(max_batch_size=4, max_queue_delay_s=0.0)
    batcher: DynamicBatcher[str, str] = DynamicBatcher(policy, run)
    bad = asyncio.ensure_future(batcher.submit("bad", rows=1, signature="a"))
    good = asyncio.ensure_future(batcher.submit("good", rows=1, signature="b"))
    assert await good == "good"
    with pytest.raises(ExecutionFailed, match="kernel exploded"):
        await bad
    await batcher.close()


async def test_expired_request_fails_before_execution_and_full_queue_refuses() -> None:
    gate = asyncio.Event()
    ran: list[str] = []

    async def run(items: Sequence[str]) -> list[str]:
        ran.extend(items)
        await gate.wait()
        return list(items)

    loop = asyncio.get_running_loop()
    policy = BatchPolicy(max_batch_size=1, max_queue_size=2)
    batcher: DynamicBatcher[str, str] = DynamicBatcher(policy, run)
    blocker = asyncio.ensure_future(batcher.submit("blocker", rows=1, signature="s"))
    await asyncio.sleep(0.01)  # the blocker occupies the only execution slot
    late = asyncio.ensure_future(batcher.submit("late", rows=1, signature="s", deadline=loop.time() + 0.01))
    queued = asyncio.ensure_future(batcher.submit("queued", rows=1, signature="s"))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as full:
        await batcher.submit("refused", rows=1, signature="s")
    assert full.value.retry_after_s > 0
    with pytest.raises(DeadlineExceeded):
        await late
    gate.set()
    assert await blocker == "blocker" and await queued == "queued"
    assert "late" not in ran
    await batcher.close()


async def test_cancelled_request_is_dropped_from_the_queue() -> None:
    gate = asyncio.Event()
    ran: list[str] = []

    async def run(items: Sequence[str]) -> list[str]:
        ran.extend(items)
        await gate.wait()
        return list(items)

    batcher: DynamicBatcher[str, str] = DynamicBatcher(BatchPolicy(max_batch_size=1), run)
    first = asyncio.ensure_future(batcher.submit("first", rows=1, signature="s"))
    await asyncio.sleep(0.01)
    gone = asyncio.ensure_future(batcher.submit("gone", rows=1, signature="s"))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0.01)
    assert batcher.queue_depth == 0
    gate.set()
    assert await first == "first"
    await batcher.close()
    assert ran == ["first"]
