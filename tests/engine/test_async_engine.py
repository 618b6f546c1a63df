"""The engine loop thread: streams, aborts between steps, and a crash reported to every open stream."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from inferd.engine import (
    EngineRequest,
    FinishReason,
    RequestUpdate,
    SamplingParams,
    Scheduler,
    SchedulerStats,
)
from inferd.engine.async_engine import AsyncLLMEngine
from inferd.engine.compute_thread import ComputeThread
from inferd.errors import DeadlineExceeded, ExecutionFailed, NotReady, QueueFull
from tests.engine.fakes import FakeRunner
from tests.engine.helpers import BS, make_scheduler
from tests.engine.test_detokenizer import tokenizer


@dataclass
class FakeEngine:
    scheduler: Scheduler = field(default_factory=make_scheduler)
    runner: FakeRunner = field(default_factory=lambda: FakeRunner(BS, sampler=lambda rid, toks: 2))
    crash_at_step: int | None = None
    gate: threading.Event | None = None
    """When set, each step waits for it after scheduling (a step that hangs until released)."""
    step_delay: float = 0.0

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> list[str]:
        request = EngineRequest(
            request_id, tuple(prompt_token_ids), sampling_params, priority=priority, cache_salt=cache_salt
        )
        return [s.request_id for s in self.scheduler.add_request(request)]

    def abort_requests(self, request_ids: Sequence[str]) -> None:
        self.scheduler.finish_requests(request_ids, FinishReason.ABORT)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> list[RequestUpdate]:
        if self.crash_at_step is not None and self.runner.steps >= self.crash_at_step:
            raise RuntimeError("boom")
        output = self.scheduler.schedule()
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.step_delay)
        return self.scheduler.update_from_output(output, self.runner.execute(output))

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()


async def test_streams_text_until_max_tokens() -> None:
    engine = AsyncLLMEngine(FakeEngine(), tokenizer())
    try:
        stream = await engine.generate([3, 4], SamplingParams(max_tokens=3))
        chunks = [c async for c in stream]
        assert "".join(c.text for c in chunks) == "ka ka ka"
        assert chunks[-1].finish_reason == "length"
        assert stream.usage.completion_tokens == 3
    finally:
        await asyncio.to_thread(engine.close)


async def test_abort_frees_the_request() -> None:
    core = FakeEngine()
    engine = AsyncLLMEngine(core, tokenizer())
    try:
        stream = await engine.generate([3, 4], SamplingParams(max_tokens=200, ignore_eos=True))
        async for _ in stream:
            break
        await stream.aclose()  # what a transport does when its client goes away
        for _ in range(200):
            if not core.has_unfinished_requests():
                break
            await asyncio.sleep(0.005)
        assert not core.has_unfinished_requests()
        assert engine.num_open_streams == 0
    finally:
        await asyncio.to_thread(engine.close)


async def test_a_crash_fails_open_streams_and_later_requests() -> None:
    engine = AsyncLLMEngine(FakeEngine(crash_at_step=2), tokenizer())
    try:
        stream = await engine.generate([3, 4], SamplingParams(max_tokens=50))
        with pytest.raises(ExecutionFailed, match="boom"):
            async for _ in stream:
                pass
        with pytest.raises(NotReady, match="boom"):
            await engine.generate([3], SamplingParams(max_tokens=2))
    finally:
        await asyncio.to_thread(engine.close)


async def test_build_runs_on_the_engine_thread() -> None:
    threads: list[threading.Thread] = []

    def build() -> FakeEngine:
        threads.append(threading.current_thread())
        return FakeEngine()

    engine = AsyncLLMEngine(None, tokenizer(), build=build)
    try:
        assert threads == [engine._thread]
        stream = await engine.generate([3, 4], SamplingParams(max_tokens=2))
        assert [c.token_ids for c in [c async for c in stream]] == [(2,), (2,)]
    finally:
        await asyncio.to_thread(engine.close)


async def test_with_a_compute_thread_build_and_steps_run_there() -> None:
    compute = ComputeThread()
    built_on: list[int] = []
    stepped_on: set[int] = set()

    class Recording(FakeEngine):
        def step(self) -> list[RequestUpdate]:
            stepped_on.add(threading.get_ident())
            return super().step()

    def build() -> FakeEngine:
        built_on.append(threading.get_ident())
        return Recording()

    engine = AsyncLLMEngine(None, tokenizer(), build=build, compute=compute)
    try:
        stream = await engine.generate([3, 4], SamplingParams(max_tokens=3))
        assert [c.token_ids for c in [c async for c in stream]] == [(2,), (2,), (2,)]
        on_compute = compute.call(threading.get_ident)
        assert built_on == [on_compute] and stepped_on == {on_compute}
        assert engine._thread.ident != on_compute
    finally:
        await asyncio.to_thread(engine.close)
        compute.close()


async def test_a_step_queued_behind_another_models_work_is_not_counted_as_running() -> None:
    compute = ComputeThread()
    started, release = threading.Event(), threading.Event()

    def other_model() -> None:
        started.set()
        release.wait(10)

    blocker = threading.Thread(target=compute.call, args=(other_model,))
    blocker.start()
    assert started.wait(5)
    engine = AsyncLLMEngine(FakeEngine(), tokenizer(), compute=compute)
    try:
        stream = await engine.generate([3, 4], SamplingParams(max_tokens=2))
        await asyncio.sleep(0.2)  # its step waits for the compute thread
        assert engine.step_seconds == 0.0  # a watchdog must not take it for a hung step
        release.set()
        assert [c.token_ids for c in [c async for c in stream]] == [(2,), (2,)]
    finally:
        release.set()
        blocker.join(5)
        await asyncio.to_thread(engine.close)
        compute.close()


def test_a_failing_build_is_raised_and_leaves_no_thread() -> None:
    def build() -> FakeEngine:
        raise RuntimeError("no weights")

    before = set(threading.enumerate())  # other tests' leftover threads may end meanwhile: compare sets
    with pytest.raises(RuntimeError, match="no weights"):
        AsyncLLMEngine(None, tokenizer(), build=build)
    assert set(threading.enumerate()) - before == set()


async def test_tenant_priority_and_deadline_reach_the_scheduler() -> None:
    core = FakeEngine(gate=threading.Event())
    engine = AsyncLLMEngine(core, tokenizer())
    try:
        stream = await engine.generate(
            [3, 4], SamplingParams(max_tokens=2), tenant="acme", priority=1, deadline=time.monotonic() + 60
        )
        request = core.scheduler.get_request(stream.request_id)
        assert request is not None
        assert (request.tenant, request.priority) == ("acme", 1) and request.deadline is not None
        core.gate.set()  # type: ignore[union-attr]
        assert len([c async for c in stream]) == 2
    finally:
        core.gate.set()  # type: ignore[union-attr]
        await asyncio.to_thread(engine.close)


async def test_a_full_queue_refuses_at_once_while_the_engine_is_busy() -> None:
    gate = threading.Event()
    core = FakeEngine(make_scheduler(max_num_seqs=1, max_waiting_requests=2), gate=gate)
    engine = AsyncLLMEngine(core, tokenizer())
    try:
        first = await engine.generate([3], SamplingParams(max_tokens=50, ignore_eos=True))
        await asyncio.sleep(0.05)  # the engine thread is now inside a step, waiting for the gate
        queued = [
            asyncio.create_task(engine.generate([3, 4], SamplingParams(max_tokens=2))) for _ in range(2)
        ]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as refused:  # the engine thread is blocked: refused on the event loop
            await asyncio.wait_for(engine.generate([3, 4], SamplingParams(max_tokens=2)), 5)
        assert refused.value.retry_after_s > 0
        assert engine.step_seconds > 0.0
        gate.set()
        for task in queued:
            stream = await task
            assert len([c async for c in stream]) == 2
        await first.aclose()
    finally:
        gate.set()
        await asyncio.to_thread(engine.close)


async def test_a_request_past_its_deadline_fails_with_deadline_exceeded() -> None:
    core = FakeEngine(make_scheduler(max_num_seqs=1), step_delay=0.005)
    engine = AsyncLLMEngine(core, tokenizer())
    try:
        hog = await engine.generate([3], SamplingParams(max_tokens=200, ignore_eos=True))
        late = await engine.generate([3, 4], SamplingParams(max_tokens=2), deadline=time.monotonic() + 0.05)
        with pytest.raises(DeadlineExceeded, match="before its first token"):
            async for _ in late:
                pass
        await hog.aclose()
        with pytest.raises(DeadlineExceeded):
            await engine.generate([3], SamplingParams(max_tokens=2), deadline=time.monotonic() - 1)
    finally:
        await asyncio.to_thread(engine.close)


async def test_a_crash_sets_failure_and_calls_on_failure() -> None:
    reasons: list[str] = []
    engine = AsyncLLMEngine(FakeEngine(crash_at_step=1), tokenizer(), on_failure=reasons.append)
    try:
        assert engine.failure is None
        stream = await engine.generate([3, 4], SamplingParams(max_tokens=50))
        with pytest.raises(ExecutionFailed):
            async for _ in stream:
                pass
        assert engine.failure is not None and "RuntimeError: boom" in engine.failure
        assert reasons == [engine.failure]
        # A request posted after the loop ended is answered, not left hanging.
        engine._error = None  # as if it raced the crash: the inbox is no longer read
        with pytest.raises(NotReady, match="boom"):
            await asyncio.wait_for(engine.generate([3], SamplingParams(max_tokens=2)), 2)
    finally:
        await asyncio.to_thread(engine.close)
