"""The asyncio driver of the batch queue: one per model version.

Requests are submitted from the event loop; a single dispatcher task forms batches whenever an execution
slot is free and hands each batch to `run_batch`, a coroutine that returns one result per request (the runtime
adapter runs the model in a worker thread). A failing batch fails only its own requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from inferd.batching.queue import BatchPolicy, BatchQueue, QueuedItem
from inferd.errors import DeadlineExceeded, ExecutionFailed, InferdError, NotReady, QueueFull

P = TypeVar("P")
R = TypeVar("R")

RunBatch = Callable[[Sequence[P]], Awaitable[Sequence[R]]]
"""Runs payloads as one batch and returns their results in order."""


class DynamicBatcher(Generic[P, R]):
    """Queues payloads and runs them in batches on at most `concurrency` slots."""

    def __init__(
        self,
        policy: BatchPolicy,
        run_batch: RunBatch[P, R],
        *,
        concurrency: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        """`on_batch(requests, rows)` is called for every batch dispatched (metrics)."""
        self.policy = policy
        self._run_batch = run_batch
        self._clock = clock
        self._queue: BatchQueue[tuple[P, asyncio.Future[R]]] = BatchQueue(policy)
        self._slots = concurrency
        self._busy = 0
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._on_batch = on_batch
        self._executing = 0
        self._drain_rate = _DrainRate()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_loop())

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Requests queued or executing."""
        return len(self._queue) + self._executing

    async def submit(
        self, payload: P, *, rows: int, signature: Hashable, priority: int = 1, deadline: float | None = None
    ) -> R:
        """Queue `payload` and wait for its result. Raises QueueFull at once when the queue is full."""
        if self._closed:
            raise NotReady("model is unloading")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        item = QueuedItem((payload, future), rows, signature, priority, self._clock(), deadline)
        if not self._queue.push(item):
            raise QueueFull(
                f"queue full: {len(self._queue)} requests waiting (max_queue_size)",
                retry_after_s=self._drain_rate.seconds_to_drain(len(self._queue)),
            )
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            # The client went away: drop its queued work so nothing runs for it.
            self._queue.remove(item)
            raise

    async def close(self) -> None:
        """Stop accepting work, finish everything queued or running, then stop the dispatcher."""
        self._closed = True
        self._wakeup.set()
        while len(self._queue) or self._tasks:
            await asyncio.sleep(0.001)
            self._wakeup.set()
        self._dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._dispatcher

    async def _dispatch_loop(self) -> None:
        while True:
            self._wakeup.clear()
            self._dispatch()
            timeout = None
            wake = self._queue.wake_at(slot_free=self._busy < self._slots)
            if wake is not None:
                timeout = max(wake - self._clock(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _dispatch(self) -> None:
        """Fail expired requests and start every batch that is ready while slots are free."""
        now = self._clock()
        for item in self._queue.pop_expired(now):
            _, fut = item.payload
            if not fut.done():
                fut.set_exception(DeadlineExceeded("request timeout expired while queued, before execution"))
        while self._busy < self._slots:
            batch = self._queue.next_batch(now)
            if batch is None:
                break
            live = [it for it in batch if not it.payload[1].done()]
            if not live:
                continue
            self._busy += 1
            self._executing += len(live)
            task = asyncio.get_running_loop().create_task(self._execute(live))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, batch: list[QueuedItem[tuple[P, asyncio.Future[R]]]]) -> None:
        started = self._clock()
        outcome: Sequence[R] | BaseException
        try:
            if self._on_batch is not None:
                self._on_batch(len(batch), sum(it.rows for it in batch))
            outcome = await self._run_batch([it.payload[0] for it in batch])
            if len(outcome) != len(batch):
                outcome = ExecutionFailed(
                    f"runtime returned {len(outcome)} results for {len(batch)} requests"
                )
        except InferdError as exc:
            outcome = exc
        except Exception as exc:  # the runtime's own failure: fail this batch only
            outcome = ExecutionFailed(f"{type(exc).__name__}: {exc}")
        finally:
            self._drain_rate.record(len(batch), self._clock() - started)
            self._executing -= len(batch)
            self._busy -= 1
        # Start the next batch before this one's responses are processed: the runtime must not idle while
        # the event loop encodes and writes them.
        self._dispatch()
        self._wakeup.set()
        for i, it in enumerate(batch):
            fut = it.payload[1]
            if fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome[i])


class _DrainRate:
    """Exponentially averaged requests per second of execution, for Retry-After."""

    def __init__(self) -> None:
        self._rate = 0.0

    def record(self, requests: int, seconds: float) -> None:
        rate = requests / max(seconds, 1e-6)
        self._rate = rate if self._rate == 0 else 0.8 * self._rate + 0.2 * rate

    def seconds_to_drain(self, queued: int) -> float:
        if self._rate <= 0:
            return 1.0
        return max(queued / self._rate, 0.001)
