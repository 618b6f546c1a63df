"""Exact enforcement under concurrency: 64 streaming chat requests race for a budget that admits 10 of them,
and rate limits refuse with OpenAI's 429 shape and `x-ratelimit-*` headers."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from inferd.gateway.budgets import ZERO, Amount
from inferd.store.records import MICROS
from tests.conftest import eventually
from tests.governance.conftest import CHAT_PROMPT_TOKENS, LLM, MESSAGES, Governed, bearer, metric

MAX_TOKENS = 16
RESERVATION = CHAT_PROMPT_TOKENS + MAX_TOKENS
"""What one request reserves: prompt + max_tokens (ignore_eos makes it also what it settles)."""
BUDGET = 10 * RESERVATION + RESERVATION // 2
REQUESTS = 64


@dataclass
class Outcome:
    status: int
    headers: httpx.Headers
    body: dict[str, Any] | None = None
    """The error body of a refusal."""
    text: str = ""
    usage: dict[str, Any] | None = None
    done: bool = False


def chat_body(max_tokens: int = MAX_TOKENS, stream: bool = True) -> dict[str, Any]:
    return {
        "model": LLM,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


async def stream_chat(client: httpx.AsyncClient, key: str) -> Outcome:
    """One streaming chat completion, read to its end (SSE)."""
    async with client.stream("POST", "/v1/chat/completions", json=chat_body(), headers=bearer(key)) as r:
        if r.status_code != 200:
            return Outcome(r.status_code, r.headers, orjson.loads(await r.aread()))
        out = Outcome(r.status_code, r.headers)
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                out.done = True
                continue
            event = orjson.loads(data)
            assert "error" not in event, event
            if event.get("usage"):
                out.usage = event["usage"]
            for choice in event["choices"]:
                out.text += choice["delta"].get("content", "")
        return out


def ledger(governed: Governed, tenant: str) -> tuple[int, int, int]:
    """(rows, tokens, cost micros) of the tenant's rows in the SQLite ledger, read directly once the
    server's importer has caught up with its journal."""
    governed.server.server.governance.store.import_ledger()  # type: ignore[union-attr]
    conn = sqlite3.connect(f"file:{governed.state_dir / 'inferd.db'}?mode=ro", uri=True)
    try:
        rows, tokens, cost = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0), "
            "COALESCE(SUM(cost_micros), 0) FROM usage WHERE tenant = ?",
            (tenant,),
        ).fetchone()
    finally:
        conn.close()
    return int(rows), int(tokens), int(cost)


def in_flight(governed: Governed) -> Amount:
    """Everything the server holds reserved, read on its own loop."""
    governance = governed.server.server.governance
    assert governance is not None

    async def read() -> Amount:
        return governance.book.in_flight()

    result = governed.server.call(read())
    assert isinstance(result, Amount)
    return result


def well_formed_error(outcome: Outcome, error_type: str) -> dict[str, Any]:
    assert outcome.status == 429, outcome
    assert outcome.body is not None and set(outcome.body) == {"error"}, outcome.body
    error = outcome.body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == error_type
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert outcome.headers.get("x-request-id")
    assert outcome.headers.get("content-type") == "application/json"
    return dict(error)


PRICE = {"model": LLM, "prompt_per_1k": 2.0, "completion_per_1k": 4.0}
COST_MICROS = CHAT_PROMPT_TOKENS * 2000 + MAX_TOKENS * 4000
"""One request's cost at PRICE in micro-units (7 x 2000 + 16 x 4000 = 78000)."""
BUDGETS = {
    "tokens": {"max_tokens": BUDGET},
    "cost": {"max_cost": 10.5 * COST_MICROS / MICROS},
    "requests": {"max_requests": 10},
}


@pytest.mark.parametrize("dimension", list(BUDGETS))
async def test_budget_race_64_streams(governed: Governed, dimension: str) -> None:
    """64 concurrent streams against a budget (of tokens, cost or requests) that admits exactly 10."""
    admin = governed.admin
    tenant = admin.tenant(f"race-{dimension}")
    _, key = admin.create_key(tenant, models=["alpha*"])
    admin.call("PUT", "/prices", json=PRICE)
    admin.budget(tenant, period="total", **BUDGETS[dimension])
    assert in_flight(governed) == ZERO

    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=governed.base, timeout=60, limits=limits) as client:
        outcomes = await asyncio.gather(*(stream_chat(client, key) for _ in range(REQUESTS)))

    admitted = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    # Exact: every admitted request settles its whole reservation (ignore_eos), so exactly the 10 that fit
    # are admitted: never more (the budget holds), never fewer (no request refused while it fit).
    assert len(admitted) == 10, [o.status for o in outcomes]
    assert len(refused) == REQUESTS - 10
    for o in admitted:
        assert o.done and o.usage is not None
        assert o.usage["prompt_tokens"] == CHAT_PROMPT_TOKENS
        assert o.usage["completion_tokens"] == MAX_TOKENS
        assert o.usage["cost"] * MICROS == pytest.approx(COST_MICROS)
    for o in refused:
        error = well_formed_error(o, "insufficient_quota")
        assert error["code"] == "budget_exceeded"
        assert f"total {dimension} budget" in error["message"]
        assert "retry-after" not in o.headers  # not retryable
        assert not any(h.startswith("x-ratelimit-") for h in o.headers)

    # Settled usage, from the ledger itself and from the server's budget status.
    rows, tokens, cost = ledger(governed, tenant)
    assert rows == len(admitted)
    assert tokens == len(admitted) * RESERVATION <= BUDGET
    assert cost == len(admitted) * COST_MICROS
    assert tokens == sum(o.usage["total_tokens"] for o in admitted if o.usage)
    (status,) = admin.budgets(tenant)
    assert (status["used_tokens"], status["used_cost"], status["used_requests"]) == (
        tokens,
        cost / MICROS,
        rows,
    )
    assert status["in_flight_tokens"] == 0
    usage = admin.usage(tenant)
    assert [(u["model"], u["requests"]) for u in usage] == [(LLM, 10)]
    assert usage[0]["prompt_tokens"] + usage[0]["completion_tokens"] == tokens
    # Nothing left reserved anywhere in the server.
    assert in_flight(governed) == ZERO

    # Counted per tenant and reason; the gauge shows what is left of the budget.
    assert metric(governed, "inferd_rejections_total", tenant=tenant, reason="budget") == len(refused)
    left = {"tokens": BUDGET - tokens, "cost": (BUDGETS["cost"]["max_cost"] * MICROS - cost) / MICROS,
            "requests": 0}[dimension]  # fmt: skip

    def gauged() -> None:  # the gauge follows a new budget at the config watcher's next tick
        gauge = metric(governed, "inferd_budget_remaining", tenant=tenant, kind=dimension)
        assert gauge == pytest.approx(left)

    eventually(gauged)

    # The refusals were audited, each with its reason.
    def audited() -> None:
        refusals = admin.audit(tenant, action="limit.refused")
        assert [e["outcome"] for e in refusals] == ["budget"] * len(refused)

    eventually(audited)
    # One more request is still refused.
    async with httpx.AsyncClient(base_url=governed.base, timeout=60) as client:
        again = await stream_chat(client, key)
    well_formed_error(again, "insufficient_quota")


def test_requests_per_minute(governed: Governed) -> None:
    """A key's RPM limit: the headers count down, then 429 rate_limit_exceeded with Retry-After."""
    admin = governed.admin
    tenant = admin.tenant("rpm")
    _, key = admin.create_key(tenant, models=["alpha*"], rpm=3)
    with httpx.Client(base_url=governed.base, headers=bearer(key), timeout=60) as client:
        started = time.monotonic()
        seen = []
        for _ in range(3):
            r = client.post("/v1/chat/completions", json=chat_body(max_tokens=1, stream=False))
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            assert r.headers["x-ratelimit-reset-requests"]
            seen.append(int(r.headers["x-ratelimit-remaining-requests"]))
            assert "x-ratelimit-limit-tokens" not in r.headers  # no TPM limit set
        refill = math.floor((time.monotonic() - started) * 3 / 60)
        assert seen == sorted(seen, reverse=True) and seen[-1] <= refill
        r = client.post("/v1/chat/completions", json=chat_body(max_tokens=1, stream=False))
    outcome = Outcome(r.status_code, r.headers, r.json())
    error = well_formed_error(outcome, "rate_limit_exceeded")
    assert error["code"] == "requests_per_minute_exceeded"
    assert int(r.headers["retry-after"]) >= 1
    assert r.headers["x-ratelimit-limit-requests"] == "3"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert in_flight(governed) == ZERO


def test_tokens_per_minute(governed: Governed) -> None:
    """A tenant's TPM limit counts prompt + max_tokens at admission: the -tokens trio, then 429."""
    admin = governed.admin
    reservation = CHAT_PROMPT_TOKENS + 8
    tenant = admin.tenant("tpm", tpm=2 * reservation + 3)
    _, key = admin.create_key(tenant, models=["alpha*"])
    with httpx.Client(base_url=governed.base, headers=bearer(key), timeout=60) as client:
        remaining = []
        for _ in range(2):
            r = client.post("/v1/chat/completions", json=chat_body(max_tokens=8, stream=False))
            assert r.status_code == 200, r.text
            assert r.headers["x-ratelimit-limit-tokens"] == str(2 * reservation + 3)
            assert r.headers["x-ratelimit-reset-tokens"]
            remaining.append(int(r.headers["x-ratelimit-remaining-tokens"]))
        assert remaining[0] > remaining[1]
        r = client.post("/v1/chat/completions", json=chat_body(max_tokens=8, stream=False))
        outcome = Outcome(r.status_code, r.headers, r.json())
        error = well_formed_error(outcome, "rate_limit_exceeded")
        assert error["code"] == "tokens_per_minute_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["x-ratelimit-limit-tokens"] == str(2 * reservation + 3)
        assert int(r.headers["x-ratelimit-remaining-tokens"]) < reservation
        assert r.headers["x-ratelimit-reset-tokens"]
        # A request that could never fit the limit says so (and still is a rate-limit refusal).
        r = client.post("/v1/chat/completions", json=chat_body(max_tokens=100, stream=False))
        assert r.status_code == 429
        assert r.json()["error"]["type"] == "rate_limit_exceeded"
        assert "lower max_tokens" in r.json()["error"]["message"]
    assert in_flight(governed) == ZERO


async def test_concurrency_cap(governed: Governed) -> None:
    """A tenant's cap on requests in flight: the excess is refused as a retryable rate limit."""
    admin = governed.admin
    tenant = admin.tenant("concurrent", max_concurrent=3)
    _, key = admin.create_key(tenant, models=["alpha*"])
    async with httpx.AsyncClient(base_url=governed.base, timeout=60) as client:
        outcomes = await asyncio.gather(*(stream_chat(client, key) for _ in range(16)))
    admitted = [o for o in outcomes if o.status == 200]
    assert len(admitted) >= 3
    assert all(o.done for o in admitted)
    for o in outcomes:
        if o.status != 200:
            error = well_formed_error(o, "rate_limit_exceeded")
            assert error["code"] == "concurrent_requests_exceeded"
            assert int(o.headers["retry-after"]) >= 1
    assert ledger(governed, tenant)[0] == len(admitted)
    assert in_flight(governed) == ZERO


async def test_rate_limit_race(governed: Governed) -> None:
    """32 concurrent requests against a 5 RPM tenant: no more pass than the bucket holds."""
    admin = governed.admin
    tenant = admin.tenant("rpm-race", rpm=5)
    _, key = admin.create_key(tenant, models=["alpha*"])
    body = chat_body(max_tokens=2, stream=False)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=governed.base, headers=bearer(key), timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(32)))
    refill = math.floor((time.monotonic() - started) * 5 / 60)
    passed = [r for r in responses if r.status_code == 200]
    assert 5 <= len(passed) <= 5 + refill
    for r in responses:
        if r.status_code != 200:
            outcome = Outcome(r.status_code, r.headers, r.json())
            assert well_formed_error(outcome, "rate_limit_exceeded")["code"] == "requests_per_minute_exceeded"
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-ratelimit-limit-requests"] == "5"
    assert ledger(governed, tenant)[0] == len(passed)
    assert in_flight(governed) == ZERO


async def test_disconnects_release_reservations(governed: Governed) -> None:
    """Clients that walk away mid-stream free their reservations; what they used is settled and in the
    ledger, and the budget's settled usage equals the ledger's sums."""
    admin = governed.admin
    tenant = admin.tenant("walkaway")
    _, key = admin.create_key(tenant, models=["alpha*"])
    admin.budget(tenant, period="total", max_tokens=10**6)
    body = {**chat_body(max_tokens=100), "stream_options": None}
    ids: list[str] = []

    async def walk_away(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=bearer(key)) as r:
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
            async for line in r.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    return  # close the connection after the first token

    async with httpx.AsyncClient(base_url=governed.base, timeout=60) as client:
        await asyncio.gather(*(walk_away(client) for _ in range(8)))

    def settled() -> tuple[int, int, int]:
        assert in_flight(governed) == ZERO
        rows = ledger(governed, tenant)
        assert rows[0] == len(ids)
        return rows

    rows, tokens, _ = eventually(settled)
    assert tokens < len(ids) * (CHAT_PROMPT_TOKENS + 100)  # they stopped early
    (status,) = admin.budgets(tenant)
    assert (status["used_requests"], status["used_tokens"], status["in_flight_tokens"]) == (rows, tokens, 0)
    governed.server.server.governance.store.import_ledger()  # type: ignore[union-attr]
    conn = sqlite3.connect(f"file:{governed.state_dir / 'inferd.db'}?mode=ro", uri=True)
    try:
        statuses = {
            r[0]: r[1]
            for r in conn.execute("SELECT request_id, status FROM usage WHERE tenant = ?", (tenant,))
        }
    finally:
        conn.close()
    assert statuses.keys() == set(ids)
    assert set(statuses.values()) == {"cancelled"}
