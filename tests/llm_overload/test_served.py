"""Acceptance tests over HTTP against the served tiny model: head-of-line protection, disconnects freeing the
engine within a second, and a full queue refused at once with Retry-After (issue 5)."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from tests.conftest import RunningServer

from .conftest import MAX_MODEL_LEN, MODEL, SERVER_CONFIG, StepLog, percentile, scheduler_of

LONG_PROMPT = 2048
PREFILL_CAP = int(SERVER_CONFIG["max_prefill_share"] * SERVER_CONFIG["max_num_batched_tokens"])


def completions(server: RunningServer) -> str:
    return f"http://{server.http_url}/v1/completions"


def engine_id(log: StepLog, request_id: str) -> str:
    with log.lock:
        return next(rid for rid in log.added if rid.startswith(f"{request_id}-"))


async def first_token_seconds(
    client: httpx.AsyncClient, url: str, request_id: str, prompt: list[int]
) -> float:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 2, "stream": True, "ignore_eos": True}
    start = time.monotonic()
    async with client.stream("POST", url, json=body, headers={"x-request-id": request_id}) as response:
        assert response.status_code == 200
        ttft = None
        async for line in response.aiter_lines():  # the whole stream: the request ends before the next
            if ttft is None and line.startswith("data:"):
                ttft = time.monotonic() - start
    assert ttft is not None
    return ttft


async def test_one_token_prompts_keep_their_ttft_while_a_long_prompt_prefills(
    served: RunningServer, step_log: StepLog
) -> None:
    url = completions(served)
    async with httpx.AsyncClient(timeout=60) as client:
        idle = [await first_token_seconds(client, url, f"idle{i}", [5]) for i in range(10)]
        long_body = {"model": MODEL, "prompt": [7 + i % 100 for i in range(LONG_PROMPT)], "max_tokens": 1}
        long_task = asyncio.create_task(
            client.post(url, json=long_body, headers={"x-request-id": "long"}, timeout=60)
        )
        while not any(rid.startswith("long-") for rid in list(step_log.added)):
            await asyncio.sleep(0.001)
        loaded: list[float] = []
        shorts: list[str] = []
        while not long_task.done():
            shorts.append(f"short{len(shorts)}")
            loaded.append(await first_token_seconds(client, url, shorts[-1], [5]))
        assert (await long_task).status_code == 200

    long_id = engine_id(step_log, "long")
    prefill_steps = [s for s in step_log.steps if long_id in s.scheduled]
    assert len(prefill_steps) >= LONG_PROMPT // SERVER_CONFIG["max_num_batched_tokens"]
    during = [
        rid
        for rid in (engine_id(step_log, r) for r in shorts)
        if step_log.first_step(rid).index < prefill_steps[-1].index
    ]
    assert len(during) >= 5, "short requests arrived while the long prompt was prefilled"
    for rid in during:
        # Scheduled in the very step after it was queued, beside a capped chunk of the long prompt.
        assert step_log.steps_waited(rid) == 0
        step = step_log.first_step(rid)
        assert step.scheduled.get(long_id, 0) <= PREFILL_CAP
    # Wall clock, robust to noise: medians, and a margin for a busy machine.
    assert percentile(loaded, 0.5) <= 3 * percentile(idle, 0.5) + 0.010
    print(
        f"\nTTFT of 1-token prompts: idle p50 {percentile(idle, 0.5) * 1000:.1f} ms p90 "
        f"{percentile(idle, 0.9) * 1000:.1f} ms; while a {LONG_PROMPT}-token prompt prefilled over "
        f"{len(prefill_steps)} steps: p50 {percentile(loaded, 0.5) * 1000:.1f} ms p90 "
        f"{percentile(loaded, 0.9) * 1000:.1f} ms ({len(loaded)} requests)"
    )


async def test_disconnected_streams_free_the_engine_within_a_second(served: RunningServer) -> None:
    url = completions(served)
    scheduler = scheduler_of(served)
    metrics_url = f"http://{served.http_url}/metrics"

    async def gauges(client: httpx.AsyncClient) -> tuple[float, float]:
        text = (await client.get(metrics_url)).text
        running = re.search(rf'inferd_num_requests_running{{model="{MODEL}",version="1"}} (\S+)', text)
        usage = re.search(rf'inferd_kv_cache_usage_ratio{{model="{MODEL}",version="1"}} (\S+)', text)
        assert running and usage
        return float(running.group(1)), float(usage.group(1))

    body = {
        "model": MODEL,
        "prompt": "ka lo mi nu",
        "max_tokens": MAX_MODEL_LEN - 16,
        "stream": True,
        "ignore_eos": True,
    }
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        idle_running, idle_usage = await gauges(client)
        assert (idle_running, idle_usage) == (0.0, 0.0)
        streaming = asyncio.Event()
        started = 0

        async def client_that_leaves() -> None:
            nonlocal started
            async with client.stream("POST", url, json=body) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break
                started += 1
                if started == 32:
                    streaming.set()
                await streaming.wait()  # every client is mid-generation; then all go away together

        await asyncio.gather(*(client_that_leaves() for _ in range(32)))
        left = time.monotonic()
        while True:
            running, usage = await gauges(client)
            if (running, usage) == (idle_running, idle_usage) or time.monotonic() - left > 1.0:
                break
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - left
    assert (running, usage) == (idle_running, idle_usage), f"still {running} running, KV {usage} after 1 s"
    assert scheduler.num_running == scheduler.num_waiting == 0 and scheduler.kv_cache.usage == 0.0
    print(f"\n32 streams closed: engine idle after {elapsed * 1000:.0f} ms")


async def test_a_full_queue_is_refused_at_once_with_retry_after(served: RunningServer) -> None:
    url = completions(served)
    bound = SERVER_CONFIG["max_num_seqs"] + SERVER_CONFIG["max_waiting_requests"]
    body = {"model": MODEL, "prompt": "ka lo", "max_tokens": 400, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=128)) as client:

        async def call() -> tuple[int, float, httpx.Headers]:
            start = time.monotonic()
            response = await client.post(url, json=body)
            return response.status_code, time.monotonic() - start, response.headers

        results = await asyncio.gather(*(call() for _ in range(bound + 24)))
    served_ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(served_ok) + len(refused) == len(results)
    assert len(served_ok) >= bound and len(refused) >= 1
    for _, _, headers in refused:
        assert int(headers["retry-after"]) >= 1
    fastest_served = min(seconds for _, seconds, _ in served_ok)
    assert max(seconds for _, seconds, _ in refused) < fastest_served, "refusals come before any answer"
    print(
        f"\n{len(refused)} of {len(results)} refused (429) in at most "
        f"{max(s for _, s, _ in refused) * 1000:.0f} ms; served ones took >= {fastest_served * 1000:.0f} ms"
    )
