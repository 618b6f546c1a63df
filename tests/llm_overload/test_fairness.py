"""Acceptance: tenant a keeps 64 long requests queued while tenant b sends one request at a time; b's
requests start in the step after they are queued, alone in that step (none of a's batch beside them), so
b's TTFT stays close to what it is on an idle engine: wall-clock numbers are printed here and measured in
`benchmarks/overload.py --only fairness` (no timing assertions in tests).

Through the engine loop (`AsyncLLMEngine`) over the real tiny model: the gateway does not pass tenants to the
engine yet. The same request sent as tenant a instead waits behind a's whole queue (the contrast).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inferd.engine import CacheConfig, EngineConfig, SamplingParams, SchedulerConfig
from inferd.engine.async_engine import AsyncLLMEngine
from inferd.engine.llm_engine import LLMEngine
from inferd.engine.tokenizer import Tokenizer

from .conftest import VOCAB, StepLog, build_model, percentile

A_IN_FLIGHT = 64
A_PROMPT = 192
B_PROMPT = 16


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fair-model")
    build_model(path)
    return path


@pytest.fixture
async def engine(model_dir: Path) -> AsyncIterator[AsyncLLMEngine]:
    config = EngineConfig(
        SchedulerConfig(
            max_model_len=512,
            max_num_seqs=8,
            max_num_batched_tokens=64,
            max_prefill_share=0.5,
            long_prefill_token_threshold=16,
        ),
        CacheConfig(num_blocks=512),
    )
    loop = AsyncLLMEngine(None, Tokenizer.load(model_dir), build=lambda: LLMEngine.load(model_dir, config))
    yield loop
    await asyncio.to_thread(loop.close)


def prompt(seed: int, length: int) -> list[int]:
    return [10 + (seed * 31 + i * 7) % (VOCAB - 10) for i in range(length)]


async def time_to_first_token(engine: AsyncLLMEngine, request_id: str, tenant: str) -> float:
    start = time.monotonic()
    stream = await engine.generate(
        prompt(hash(request_id) % 1000, B_PROMPT),
        SamplingParams(max_tokens=2, ignore_eos=True),
        request_id=request_id,
        tenant=tenant,
    )
    ttft = None
    async for _ in stream:
        if ttft is None:
            ttft = time.monotonic() - start
    assert ttft is not None
    return ttft


async def test_a_flooding_tenant_does_not_delay_another(engine: AsyncLLMEngine) -> None:
    scheduler = engine.engine.scheduler
    log = StepLog.attach(scheduler)
    idle = [await time_to_first_token(engine, f"idle{i}", "b") for i in range(10)]

    stop = asyncio.Event()

    async def tenant_a(k: int) -> None:  # one of a's 64 requests in flight, replaced as soon as it ends
        n = 0
        while not stop.is_set():
            stream = await engine.generate(
                prompt(k * 100 + n, A_PROMPT),
                SamplingParams(max_tokens=24, ignore_eos=True),
                request_id=f"a{k}.{n}",
                tenant="a",
            )
            async for _ in stream:
                pass
            n += 1

    flood = [asyncio.create_task(tenant_a(k)) for k in range(A_IN_FLIGHT)]
    try:
        while scheduler.num_waiting < A_IN_FLIGHT - 8:
            await asyncio.sleep(0.005)
        loaded: list[float] = []
        for i in range(10):
            loaded.append(await time_to_first_token(engine, f"b{i}", "b"))
            assert scheduler.num_waiting >= A_IN_FLIGHT - 8 - 2, "a keeps its queue full"
        # The contrast: the same request from tenant a starts only after a's queue ahead of it.
        contrast = await time_to_first_token(engine, "a-probe", "a")
    finally:
        stop.set()
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)

    b_ids = [next(r for r in log.added if r.startswith(f"b{i}-")) for i in range(10)]
    waits = [log.steps_waited(rid) for rid in b_ids]
    assert waits == [0] * 10, f"b's requests waited {waits} steps"
    # What bounds b's TTFT by wall clock: its first step carries its prompt alone, none of a's batch, so
    # b waits at most for the step in progress plus one step as light as on an idle engine (the ratio is
    # measured by `benchmarks/overload.py --only fairness`, results in benchmarks/RESULTS.md).
    first = [sorted(log.first_step(rid).scheduled) for rid in b_ids]
    assert first == [[rid] for rid in b_ids], f"b's first steps also carried {first}"
    probe = next(r for r in log.added if r.startswith("a-probe-"))
    assert log.steps_waited(probe) > 20
    print(
        f"\nb's TTFT: idle p50 {percentile(idle, 0.5) * 1000:.1f} ms "
        f"p90 {percentile(idle, 0.9) * 1000:.1f} ms; "
        f"while a keeps {A_IN_FLIGHT} in flight: p50 {percentile(loaded, 0.5) * 1000:.1f} ms p90 "
        f"{percentile(loaded, 0.9) * 1000:.1f} ms (steps waited {waits}); the same request as tenant a: "
        f"{contrast * 1000:.0f} ms, {log.steps_waited(probe)} steps"
    )
