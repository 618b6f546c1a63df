"""Token buckets, concurrency counters, and how admission applies them (key and tenant limits)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.errors import RateLimited
from inferd.gateway.governance import Consumed, Demand, Governance
from inferd.gateway.ratelimit import Buckets, Concurrency, TokenBucket, limit_states
from inferd.store.records import ApiKey, Limits, Tenant
from inferd.store.sqlite import SqliteStore
from tests.gateway.helpers import FakeClock, ctx, new_governance

T0 = 1_700_000_000.0


# -- TokenBucket ----------------------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_linearly_over_a_minute() -> None:
    b = TokenBucket.full(60, T0)
    assert b.fits(60, T0) and not b.fits(61, T0)
    b.take(60, T0)
    assert not b.fits(1, T0)
    assert b.wait_s(1, T0) == pytest.approx(1.0)
    assert b.wait_s(30, T0) == pytest.approx(30.0)
    assert b.fits(30, T0 + 30) and not b.fits(31, T0 + 30)
    assert b.level == pytest.approx(30.0)
    assert b.fits(60, T0 + 3600) and b.level == 60.0  # never above capacity
    assert b.wait_s(61, T0 + 3600) == float("inf")
    assert b.wait_s(60, T0 + 3600) == 0.0


def test_bucket_state_reports_limit_remaining_and_seconds_to_full() -> None:
    b = TokenBucket.full(120, T0)
    s = b.state(T0)
    assert (s.limit, s.remaining, s.reset_s) == (120, 120, 0.0)
    b.take(90, T0)
    s = b.state(T0)
    assert (s.limit, s.remaining) == (120, 30)
    assert s.reset_s == pytest.approx(45.0)  # 90 missing at 2 per second
    s = b.state(T0 + 15)
    assert s.remaining == 60 and s.reset_s == pytest.approx(30.0)


def test_bucket_ignores_a_clock_going_backwards_and_give_back_caps_at_capacity() -> None:
    b = TokenBucket.full(10, T0)
    b.take(10, T0)
    assert not b.fits(1, T0 - 100)
    b.give_back(4, T0)
    assert b.level == pytest.approx(4.0)
    b.give_back(100, T0)
    assert b.level == 10.0


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 500),
    steps=st.lists(st.tuples(st.floats(0, 90, allow_nan=False), st.integers(0, 600)), max_size=30),
)
def test_bucket_level_and_state_stay_in_range(capacity: int, steps: list[tuple[float, int]]) -> None:
    """Whatever is asked when: takes happen only when they fit, the level stays in [0, capacity], and a
    refused amount fits exactly after `wait_s` (when it can ever fit)."""
    b = TokenBucket.full(capacity, T0)
    now = T0
    for dt, amount in steps:
        now += dt
        if b.fits(amount, now):
            b.take(amount, now)
        else:
            wait = b.wait_s(amount, now)
            if amount > capacity:
                assert wait == float("inf")
            else:
                assert 0 < wait <= 60.0
                probe = TokenBucket(b.capacity, b.level, b.updated)
                # A millisecond of slack: unix times near 1.7e9 resolve only ~0.2 us (and Retry-After is
                # rounded up to whole seconds anyway).
                assert probe.fits(amount, now + wait + 1e-3)
        assert -1e-9 <= b.level <= capacity
        s = b.state(now)
        assert s.limit == capacity and 0 <= s.remaining <= capacity
        assert 0.0 <= s.reset_s <= 60.0 + 1e-9


def test_buckets_are_created_full_and_resized_in_place() -> None:
    buckets = Buckets()
    b = buckets.get("key:a", "requests", 10, T0)
    assert b.level == 10.0 and buckets.get("key:a", "requests", 10, T0) is b
    assert buckets.get("key:a", "tokens", 10, T0) is not b
    b.take(2, T0)
    resized = buckets.get("key:a", "requests", 5, T0)
    assert resized is b and (b.capacity, b.level) == (5, 5.0)
    b.take(5, T0)
    assert buckets.get("key:a", "requests", 50, T0).level == 0.0


def test_concurrency_counts_per_owner() -> None:
    c = Concurrency()
    c.enter("a")
    c.enter("a")
    c.enter("b")
    assert (c.current("a"), c.current("b"), c.total()) == (2, 1, 3)
    c.leave("a")
    c.leave("a")
    c.leave("a")  # one too many: stays at zero
    assert (c.current("a"), c.total()) == (0, 1)


# -- admission --------------------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path)
    yield store


@pytest.fixture
def gov(store: SqliteStore, clock: FakeClock) -> Iterator[Governance]:
    """A governance whose configuration the test writes to `store`, then picks up with `reload_soon`."""
    store.put_tenant(Tenant("t"))
    g = new_governance(store, clock)
    yield g
    asyncio.run(g.close())


def configure(gov: Governance, tenant: Limits, **keys: Limits) -> None:
    gov.store.put_tenant(Tenant("t", tenant))
    for key_id, limits in keys.items():
        gov.store.put_key(ApiKey(key_id, "t", "unused hash", limits=limits))
    gov.reload_soon()


def level(gov: Governance, owner: str, kind: str) -> float:
    bucket = gov.buckets._buckets.get((owner, kind))
    assert bucket is not None, (owner, kind)
    bucket._refill(gov.clock())
    return bucket.level


ONE = Demand(1, 0)


def test_key_limit_refuses_without_taking_from_the_tenant(gov: Governance, clock: FakeClock) -> None:
    configure(gov, Limits(rpm=10), a=Limits(rpm=1))
    gov.admit(ctx("t", "a", "r1"), "m", "1", ONE, "")
    with pytest.raises(RateLimited) as info:
        gov.admit(ctx("t", "a", "r2"), "m", "1", ONE, "")
    exc = info.value
    assert exc.code == "requests_per_minute_exceeded"
    assert exc.retry_after_s == pytest.approx(60.0)
    assert "API key a" in str(exc) and "1 requests per minute" in str(exc)
    assert exc.limits["requests"].limit == 1 and exc.limits["requests"].remaining == 0
    assert level(gov, "tenant:t", "requests") == pytest.approx(9.0)
    clock.advance(60)
    gov.admit(ctx("t", "a", "r3"), "m", "1", ONE, "")
    assert level(gov, "tenant:t", "requests") == pytest.approx(9.0)  # refilled 1, took 1


def test_tenant_limit_refuses_without_taking_from_the_key(gov: Governance) -> None:
    configure(gov, Limits(rpm=1), a=Limits(rpm=10), b=Limits(rpm=10))
    gov.admit(ctx("t", "a", "r1"), "m", "1", ONE, "")
    with pytest.raises(RateLimited) as info:
        gov.admit(ctx("t", "b", "r2"), "m", "1", ONE, "")
    assert "tenant 't'" in str(info.value)
    assert info.value.limits["requests"].remaining == 0
    assert level(gov, "key:b", "requests") == 10.0
    assert (gov.concurrency.current("tenant:t"), gov.concurrency.current("key:b")) == (1, 0)


def test_token_limit_refusal_takes_no_request(gov: Governance) -> None:
    configure(gov, Limits(tpm=30), a=Limits(rpm=5))
    gov.admit(ctx("t", "a", "r1"), "m", "1", Demand(5, 20), "")
    with pytest.raises(RateLimited) as info:
        gov.admit(ctx("t", "a", "r2"), "m", "1", Demand(5, 5), "")
    exc = info.value
    assert exc.code == "tokens_per_minute_exceeded"
    assert exc.retry_after_s == pytest.approx(10.0)  # 5 tokens missing at 0.5 per second
    assert exc.limits["tokens"].limit == 30 and exc.limits["tokens"].remaining == 5
    assert exc.limits["requests"].limit == 5 and exc.limits["requests"].remaining == 4
    assert level(gov, "key:a", "requests") == pytest.approx(4.0)


def test_a_request_larger_than_the_token_limit_gets_a_clear_message(gov: Governance) -> None:
    configure(gov, Limits(), a=Limits(tpm=100))
    with pytest.raises(RateLimited) as info:
        gov.admit(ctx("t", "a"), "m", "1", Demand(20, 100), "")
    message = str(info.value)
    assert "request too large" in message and "120 tokens" in message and "lower max_tokens" in message
    assert info.value.retry_after_s == 60.0
    assert level(gov, "key:a", "tokens") == 100.0


async def test_settle_refunds_unused_tokens_and_release_refunds_all(gov: Governance) -> None:
    configure(gov, Limits(tpm=1000), a=Limits(tpm=100))
    lease = gov.admit(ctx("t", "a", "r1"), "m", "1", Demand(10, 70), "")
    assert level(gov, "key:a", "tokens") == pytest.approx(20.0)
    assert level(gov, "tenant:t", "tokens") == pytest.approx(920.0)
    gov.settle(lease, Consumed(10, 5), None)
    assert level(gov, "key:a", "tokens") == pytest.approx(85.0)
    assert level(gov, "tenant:t", "tokens") == pytest.approx(985.0)
    lease = gov.admit(ctx("t", "a", "r2"), "m", "1", Demand(10, 70), "")
    gov.release(lease)
    assert level(gov, "key:a", "tokens") == pytest.approx(85.0)
    gov.settle(lease, Consumed(10, 70), None)  # after release: nothing more happens
    assert level(gov, "key:a", "tokens") == pytest.approx(85.0)


async def test_concurrency_caps_are_freed_by_settle_and_release(gov: Governance) -> None:
    configure(gov, Limits(max_concurrent=2), a=Limits(max_concurrent=1, rpm=100))
    first = gov.admit(ctx("t", "a", "r1"), "m", "1", ONE, "")
    with pytest.raises(RateLimited) as info:
        gov.admit(ctx("t", "a", "r2"), "m", "1", ONE, "")
    assert info.value.code == "concurrent_requests_exceeded"
    assert "API key a" in str(info.value) and "the limit is 1" in str(info.value)
    assert level(gov, "key:a", "requests") == pytest.approx(99.0)  # the refusal took no request
    gov.release(first)
    assert gov.concurrency.total() == 0
    second = gov.admit(ctx("t", "a", "r3"), "m", "1", ONE, "")
    gov.settle(second, Consumed(1), None)
    assert gov.concurrency.total() == 0
    gov.admit(ctx("t", "a", "r4"), "m", "1", ONE, "")


def test_admission_reports_the_tighter_limit_state_for_headers(gov: Governance) -> None:
    configure(gov, Limits(rpm=100, tpm=1000), a=Limits(rpm=3, tpm=5000))
    c = ctx("t", "a")
    gov.admit(c, "m", "1", Demand(100, 100), "")
    limits = limit_states(c.limit_buckets, c.admitted_at)
    assert limits["requests"].limit == 3 and limits["requests"].remaining == 2
    assert limits["tokens"].limit == 1000 and limits["tokens"].remaining == 800
    assert limits["tokens"].reset_s == pytest.approx(12.0)


def test_limits_changed_at_run_time_apply_to_existing_buckets(gov: Governance) -> None:
    configure(gov, Limits(), a=Limits(rpm=10))
    gov.admit(ctx("t", "a", "r1"), "m", "1", ONE, "")
    configure(gov, Limits(), a=Limits(rpm=1))
    gov.admit(ctx("t", "a", "r2"), "m", "1", ONE, "")  # the bucket shrank to 1 and kept 1
    with pytest.raises(RateLimited) as info:
        gov.admit(ctx("t", "a", "r3"), "m", "1", ONE, "")
    assert info.value.limits["requests"].limit == 1
