"""The asyncio driver of the batch queue: one per model version.

Requests are submitted from the event loop; a single dispatcher task forms batches whenever an execution
slot is free and hands each batch to `run_batch`, a coroutine that returns one result per request (the runtime
adapter runs the model in a worker thread). A failing batch fails only its own requests.

Overload: a full queue refuses at once with a Retry-After from the measured drain rate; a request whose
deadline passes while it waits is failed without running; a request whose caller went away (its `submit` was
cancelled) leaves the queue. Shutdown: `close` runs what is queued without waiting for batches to fill;
`fail` refuses new work and fails everything queued (a version taken out of service).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from inferd.batching.drain_rate import DrainRate
from inferd.batching.queue import BatchPolicy, BatchQueue, QueuedItem
from inferd.errors import DeadlineExceeded, ExecutionFailed, InferdError, NotReady, QueueFull

P = TypeVar("P")
R = TypeVar("R")

RunBatch = Callable[[Sequence[P]], Awaitable[Sequence[R]]]
"""Runs payloads as one batch and returns their results in order."""
Expired = Callable[[P, float], BaseException]
"""The error of a payload whose deadline passed while it was queued (given the time now)."""


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
        name: str = "",
        on_expired: Expired[P] | None = None,
    ) -> None:
        """`on_batch(requests, rows)` is called for every batch dispatched (metrics); `name` (the model)
        appears in refusals; `on_expired` builds the error of an expired request."""
        self.policy = policy
        self.name = name
        self._run_batch = run_batch
        self._clock = clock
        self._queue: BatchQueue[tuple[P, asyncio.Future[R]]] = BatchQueue(policy)
        self._slots = concurrency
        self._busy = 0
        self._wakeup = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], list[QueuedItem[tuple[P, asyncio.Future[R]]]]] = {}
        self._closed = False
        self._flushing = False
        self._failure: str | None = None
        self._changed = asyncio.Event()
        self._on_batch = on_batch
        self._on_expired = on_expired
        self._executing = 0
        self.drain_rate = DrainRate()
        """Requests completed per second of execution (for Retry-After)."""
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch_loop())

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Requests queued or executing."""
        return len(self._queue) + self._executing

    def seconds_to_drain(self, ahead: int | None = None) -> float:
        """Estimated seconds until `ahead` requests (default: all queued or executing) have completed."""
        return self.drain_rate.seconds_to_drain(self.in_flight if ahead is None else ahead)

    async def submit(
        self,
        payload: P,
        *,
        rows: int,
        signature: Hashable,
        priority: int = 1,
        deadline: float | None = None,
        tier: int = 0,
    ) -> R:
        """Queue `payload` and wait for its result. Raises QueueFull at once when the queue is full."""
        if self._closed:
            raise NotReady(self._failure or f"model {self.name!r} is unloading")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        item = QueuedItem((payload, future), rows, signature, priority, self._clock(), deadline, tier)
        if not self._queue.push(item):
            queued = len(self._queue)
            wait = self.seconds_to_drain()
            raise QueueFull(
                f"queue full for model {self.name!r}: {queued} requests waiting (max_queue_size); "
                f"retry in {wait:.2f}s",
                retry_after_s=wait,
            )
        self._wakeup.set()
        try:
            return await future
        except asyncio.CancelledError:
            # The client went away: drop its queued work so nothing runs for it.
            self._queue.remove(item)
            raise

    async def close(self) -> None:
        """Stop accepting work, run everything queued (without waiting for batches to fill) and everything
        running to its end, then stop the dispatcher. After `fail`, returns at once."""
        if self._failure is not None:
            return
        self._closed = True
        self._flushing = True
        self._wakeup.set()
        while len(self._queue) or self._tasks:
            self._changed.clear()
            self._wakeup.set()
            await self._changed.wait()
        await self._stop_dispatcher()

    def flush(self) -> None:
        """Dispatch queued requests as soon as a slot is free, without waiting for batches to fill (while
        the server drains)."""
        self._flushing = True
        self._wakeup.set()

    def fail(self, error: InferdError, *, running: bool = False) -> None:
        """Fail every queued request with `error` and refuse new work with NotReady and its message;
        batches already running finish on their own, their requests failed now too when `running`."""
        self._closed = True
        self._failure = error.message
        items = self._queue.clear()
        if running:
            items += [it for batch in self._tasks.values() for it in batch]
        for item in items:
            fut = item.payload[1]
            if not fut.done():
                fut.set_exception(error)
        self._dispatcher.cancel()
        self._changed.set()

    async def _stop_dispatcher(self) -> None:
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
            payload, fut = item.payload
            if not fut.done():
                fut.set_exception(
                    self._on_expired(payload, now)
                    if self._on_expired is not None
                    else DeadlineExceeded(f"deadline exceeded while queued for model {self.name!r}")
                )
        # Flushing (shutdown): every queued request runs as soon as a slot is free.
        formed_at = math.inf if self._flushing else now
        while self._busy < self._slots:
            batch = self._queue.next_batch(formed_at)
            if batch is None:
                break
            live = [it for it in batch if not it.payload[1].done()]
            if not live:
                continue
            self._busy += 1
            self._executing += len(live)
            task = asyncio.get_running_loop().create_task(self._execute(live))
            self._tasks[task] = live
            task.add_done_callback(self._executed)

    def _executed(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._changed.set()

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
            # Batches running side by side each drain at their own pace: busy time is shared between them.
            self.drain_rate.record((self._clock() - started) / max(self._busy, 1), len(batch))
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
