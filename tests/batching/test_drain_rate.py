"""The drain rate: requests and tokens drained per second of busy time, over a sliding window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.batching.drain_rate import DEFAULT_SECONDS_TO_DRAIN, MAX_SECONDS_TO_DRAIN, DrainRate


def test_before_any_measurement_the_answer_is_the_default() -> None:
    rate = DrainRate()
    assert not rate.measured and rate.requests_per_s == 0.0
    assert rate.seconds_to_drain(10) == DEFAULT_SECONDS_TO_DRAIN
    rate.record(0.5, 0)  # busy, but nothing left yet: still no estimate
    assert not rate.measured and rate.seconds_to_drain(10) == DEFAULT_SECONDS_TO_DRAIN


def test_rates_in_requests_and_tokens_and_the_slower_one_drains() -> None:
    rate = DrainRate()
    rate.record(2.0, 4, 400)  # 2 requests, 200 tokens per second
    assert rate.requests_per_s == pytest.approx(2.0) and rate.tokens_per_s == pytest.approx(200.0)
    assert rate.seconds_to_drain(10) == pytest.approx(5.0)
    assert rate.seconds_to_drain(1, 1000) == pytest.approx(5.0)  # the tokens take longer
    assert rate.seconds_to_drain(0, 0) == pytest.approx(0.001)  # never 0: "retry now" helps nobody
    assert rate.seconds_to_drain(10**6) == MAX_SECONDS_TO_DRAIN


def test_parallel_executions_record_their_share_of_the_busy_time() -> None:
    rate = DrainRate()
    rate.record(2.0 / 2, 4)  # two slots side by side, 4 requests in 2 s each: 4 per second
    assert rate.requests_per_s == pytest.approx(4.0)


def test_old_intervals_leave_the_window() -> None:
    rate = DrainRate(window_s=10.0)
    rate.record(10.0, 10)  # 1 per second
    rate.record(5.0, 50)
    rate.record(5.0, 50)  # the first interval is out: 10 per second
    assert rate.requests_per_s == pytest.approx(10.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 5.0), st.integers(0, 50), st.integers(0, 5000)), min_size=1))
def test_the_window_is_the_latest_intervals_under_window_s(intervals: list[tuple[float, int, int]]) -> None:
    rate = DrainRate(window_s=10.0)
    for seconds, requests, tokens in intervals:
        rate.record(seconds, requests, tokens)
    kept = list(rate._intervals)
    assert kept == intervals[len(intervals) - len(kept) :], "the newest ones, in order"
    seconds = sum(s for s, _, _ in kept)
    assert len(kept) == 1 or seconds - kept[0][0] < 10.0, "no older interval than needed"
    assert rate.requests_per_s == pytest.approx(sum(r for _, r, _ in kept) / seconds)
    assert rate.tokens_per_s == pytest.approx(sum(t for _, _, t in kept) / seconds)
