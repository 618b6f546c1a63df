"""Admission by expected wait: the work ahead of a new request over the measured drain rate, against
`max_queue_wait_ms` (plain Python: no torch, no model)."""

from __future__ import annotations

import pytest

from inferd.engine import DrainRate, SchedulerConfig
from inferd.engine.admission import QueueLoad, check_admission, expected_wait_s
from inferd.errors import QueueFull

from .helpers import Driver, make_request, make_scheduler


def drained(requests_per_s: float, tokens_per_request: int = 10) -> DrainRate:
    rate = DrainRate()
    rate.record(1.0, int(requests_per_s), int(requests_per_s) * tokens_per_request)
    return rate


def test_a_request_that_finds_a_free_slot_waits_for_nothing() -> None:
    assert expected_wait_s(drained(10), QueueLoad(2, 20, free_slots=3), 1, 10) == 0.0
    assert expected_wait_s(DrainRate(), QueueLoad(0, 0, free_slots=1), 1, 10) == 0.0


def test_without_a_measured_drain_there_is_no_estimate() -> None:
    assert expected_wait_s(DrainRate(), QueueLoad(5, 50, free_slots=0), 1, 10) is None


def test_the_wait_is_the_requests_ahead_and_one_running_over_the_drain_rate() -> None:
    rate = drained(10)  # 10 requests (of 10 tokens) per second
    assert expected_wait_s(rate, QueueLoad(0, 0, free_slots=0), 1, 10) == pytest.approx(0.1)
    assert expected_wait_s(rate, QueueLoad(4, 40, free_slots=0), 1, 10) == pytest.approx(0.5)
    assert expected_wait_s(rate, QueueLoad(4, 40, free_slots=2), 1, 10) == pytest.approx(0.3)
    assert expected_wait_s(rate, QueueLoad(4, 40, free_slots=0), 3, 30) == pytest.approx(0.7), "n samples"


def test_prompts_longer_than_the_measured_ones_drain_slower() -> None:
    rate = drained(10, tokens_per_request=10)  # 100 tokens per second
    # 4 waiting prompts of 100 tokens: 5 requests of mean 82 tokens must leave, at 100 tokens per second
    wait = expected_wait_s(rate, QueueLoad(4, 400, free_slots=0), 1, 10)
    assert wait == pytest.approx(5 * 82 / 100)


def test_refused_past_the_bound_with_retry_after_the_excess() -> None:
    config = SchedulerConfig(max_queue_wait_ms=300)
    rate = drained(10)
    check_admission(config, rate, QueueLoad(1, 10, free_slots=0), num_requests=1, num_tokens=10)  # 0.2 s
    check_admission(config, rate, QueueLoad(2, 20, free_slots=0), num_requests=1, num_tokens=10)  # 0.3 s
    with pytest.raises(QueueFull, match="expected wait 400 ms") as refused:
        check_admission(config, rate, QueueLoad(3, 30, free_slots=0), num_requests=1, num_tokens=10)
    assert refused.value.retry_after_s == pytest.approx(0.1)


def test_before_the_first_drain_only_the_count_bounds_apply() -> None:
    config = SchedulerConfig(max_queue_wait_ms=1, max_waiting_requests=3)
    check_admission(config, DrainRate(), QueueLoad(2, 20, free_slots=0), num_requests=1, num_tokens=10)
    with pytest.raises(QueueFull, match="3 requests waiting"):
        check_admission(config, DrainRate(), QueueLoad(3, 30, free_slots=0), num_requests=1, num_tokens=10)


def test_no_bound_no_refusal() -> None:
    config = SchedulerConfig()
    check_admission(config, drained(1), QueueLoad(1000, 10**6, free_slots=0), num_requests=1, num_tokens=1)


def test_the_scheduler_bounds_its_queue_by_the_wait_it_measured() -> None:
    now = [0.0]
    s = make_scheduler(max_num_seqs=1, max_queue_wait_ms=1000, clock=lambda: now[0])
    for i in range(5):  # no measurement yet: the queue takes them all
        s.add_request(make_request(f"r{i}", 4, max_tokens=1))
    d = Driver(s)
    for _ in range(5):  # one request leaves the queue every 0.5 s: 2 per second
        now[0] += 0.5
        d.step()
    assert not s.has_unfinished_requests() and s.drain_rate.requests_per_s == pytest.approx(2.0)
    s.add_request(make_request("runs", 4, max_tokens=50))  # a free slot: it starts at the next step
    d.step()
    s.add_request(make_request("w0", 4))  # waits for "runs": 1 / 2 s
    s.add_request(make_request("w1", 4))  # 2 / 2 s
    with pytest.raises(QueueFull, match="expected wait 1500 ms") as refused:
        s.add_request(make_request("w2", 4))
    assert refused.value.retry_after_s == pytest.approx(0.5)
    assert s.num_waiting == 2 and s.get_request("w2") is None
    s.abort_request("w0")
    s.add_request(make_request("w2", 4))
