"""Tiers in the batch queue (interactive before batch, priority levels within each), and the batcher's
shutdown paths: `close` runs what is queued without waiting for batches to fill, `fail` fails it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.batching.batcher import DynamicBatcher
from inferd.batching.queue import BatchPolicy, BatchQueue, QueuedItem
from inferd.errors import NotReady


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 3)), min_size=1, max_size=30))
def test_one_at_a_time_the_queue_serves_tier_then_level_then_arrival(items: list[tuple[int, int]]) -> None:
    queue: BatchQueue[int] = BatchQueue(BatchPolicy(max_batch_size=0, priority_levels=3))
    for i, (tier, level) in enumerate(items):
        assert queue.push(QueuedItem(i, 1, "s", level, 0.0, tier=tier))
    served = []
    while (batch := queue.next_batch(0.0)) is not None:
        served += [it.payload for it in batch]
    assert served == sorted(range(len(items)), key=lambda i: (items[i][0], items[i][1], i))


def test_a_batch_fills_with_interactive_requests_first() -> None:
    queue: BatchQueue[str] = BatchQueue(BatchPolicy(max_batch_size=3, max_queue_delay_s=1.0))
    for name, tier in (("b1", 1), ("b2", 1), ("i1", 0), ("b3", 1), ("i2", 0)):
        queue.push(QueuedItem(name, 1, "s", 1, 0.0, tier=tier))
    first = queue.next_batch(0.0)  # full: dispatched at once
    assert first is not None and [it.payload for it in first] == ["i1", "i2", "b1"]
    assert [it.payload for it in queue.clear()] == ["b2", "b3"]
    assert len(queue) == 0


async def test_close_runs_queued_requests_without_waiting_for_the_delay() -> None:
    batches: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return [x + 1 for x in items]

    # A batch waits up to an hour to fill; closing (shutdown) dispatches what is there.
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        BatchPolicy(max_batch_size=8, max_queue_delay_s=3600), run
    )
    waiting = [asyncio.ensure_future(batcher.submit(i, rows=1, signature="s")) for i in range(3)]
    while batcher.queue_depth < 3:
        await asyncio.sleep(0)
    await batcher.close()
    assert await asyncio.gather(*waiting) == [1, 2, 3]
    assert batches == [[0, 1, 2]]
    with pytest.raises(NotReady):
        await batcher.submit(9, rows=1, signature="s")


async def test_fail_fails_queued_and_optionally_running_requests() -> None:
    release = asyncio.Event()

    async def run(items: Sequence[int]) -> list[int]:
        await release.wait()
        return list(items)

    for running in (False, True):
        release.clear()
        batcher: DynamicBatcher[int, int] = DynamicBatcher(BatchPolicy(max_batch_size=0), run, name="m")
        executing = asyncio.ensure_future(batcher.submit(1, rows=1, signature="s"))
        while batcher.in_flight == 0 or batcher.queue_depth:
            await asyncio.sleep(0)
        queued = asyncio.ensure_future(batcher.submit(2, rows=1, signature="s"))
        while batcher.queue_depth < 1:
            await asyncio.sleep(0)
        batcher.fail(NotReady("going away"), running=running)
        with pytest.raises(NotReady, match="going away"):
            await queued
        with pytest.raises(NotReady, match="going away"):
            await batcher.submit(3, rows=1, signature="s")
        release.set()
        if running:
            with pytest.raises(NotReady, match="going away"):
                await executing
        else:
            assert await executing == 1
        await batcher.close()  # returns at once after fail
