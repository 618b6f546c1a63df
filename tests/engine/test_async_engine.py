"""The engine loop thread: streams, aborts between steps, and a crash reported to every open stream."""

from __future__ import annotations

import asyncio
import threading
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
from inferd.errors import ExecutionFailed, NotReady
from tests.engine.fakes import FakeRunner
from tests.engine.helpers import BS, make_scheduler
from tests.engine.test_detokenizer import tokenizer


@dataclass
class FakeEngine:
    scheduler: Scheduler = field(default_factory=make_scheduler)
    runner: FakeRunner = field(default_factory=lambda: FakeRunner(BS, sampler=lambda rid, toks: 2))
    crash_at_step: int | None = None

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> list[str]:
        request = EngineRequest(request_id, tuple(prompt_token_ids), sampling_params)
        return [s.request_id for s in self.scheduler.add_request(request)]

    def abort_requests(self, request_ids: Sequence[str]) -> None:
        self.scheduler.finish_requests(request_ids, FinishReason.ABORT)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> list[RequestUpdate]:
        if self.crash_at_step is not None and self.runner.steps >= self.crash_at_step:
            raise RuntimeError("boom")
        output = self.scheduler.schedule()
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


def test_a_failing_build_is_raised_and_leaves_no_thread() -> None:
    def build() -> FakeEngine:
        raise RuntimeError("no weights")

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="no weights"):
        AsyncLLMEngine(None, tokenizer(), build=build)
    assert threading.active_count() == before
