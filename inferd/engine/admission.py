"""Admission control of the engine's waiting queue: its bounds, and how long a refused client should wait.

A new request is refused at once (`QueueFull`, a `ResourceExhausted`) when queuing it would put more
requests or tokens in the waiting queue than the scheduler's bounds allow, or when the time it is expected
to wait before it is scheduled passes `max_queue_wait_ms`. That expected wait is the work ahead of it over
the rate the engine drains its waiting queue (`DrainRate`: requests and prompt tokens leaving the queue per
second, measured over the last seconds in which the queue was not empty): a request that finds a free
sequence slot waits for nothing; otherwise the requests ahead of it, and one running request, must leave
before it gets a slot (see `expected_wait_s`). Until the queue first drained there is no estimate and only
the count bounds apply. The refusal's `retry_after_s` is the time the engine needs to drain the excess.

Bounding the wait rather than the count is what keeps admitted latency bounded under overload: the measured
rate already includes what slows the engine down (a full batch steps slower than a lone request; refusing
and streaming take CPU from the engine), so the queue holds as many requests as the engine can start within
the bound, and no more.
"""

from __future__ import annotations

from inferd.batching.drain_rate import MAX_SECONDS_TO_DRAIN, DrainRate
from inferd.engine.config import SchedulerConfig
from inferd.errors import QueueFull

__all__ = ["DrainRate", "QueueLoad", "check_admission", "expected_wait_s"]


class QueueLoad:
    """What is ahead of a new request: requests and prompt tokens waiting (queued, preempted, or on their
    way to the queue) and the sequence slots free at the next step."""

    __slots__ = ("free_slots", "waiting_requests", "waiting_tokens")

    def __init__(self, waiting_requests: int, waiting_tokens: int, free_slots: int) -> None:
        self.waiting_requests = waiting_requests
        self.waiting_tokens = waiting_tokens
        self.free_slots = free_slots

    @property
    def queued_requests(self) -> int:
        """Waiting requests that will not start at the next step (the free slots take the others)."""
        return max(0, self.waiting_requests - self.free_slots)


def expected_wait_s(drain: DrainRate, load: QueueLoad, num_requests: int, num_tokens: int) -> float | None:
    """Seconds the last of `num_requests` new requests (holding `num_tokens` prompt tokens) is expected to
    wait before it is scheduled, given `load` ahead of it; 0 when free slots take them all; None while the
    queue never drained (no estimate yet).

    `short` requests must leave the queue before the last one gets a slot: at the measured request rate, and
    at the measured token rate for `short` requests of the queue's mean size (long prompts ahead drain
    slower than the average request measured)."""
    short = load.waiting_requests + num_requests - load.free_slots
    if short <= 0:
        return 0.0
    if not drain.measured:
        return None
    by_requests = short / drain.requests_per_s
    by_tokens = 0.0
    if drain.tokens_per_s > 0:
        mean_tokens = (load.waiting_tokens + num_tokens) / (load.waiting_requests + num_requests)
        by_tokens = short * mean_tokens / drain.tokens_per_s
    return max(by_requests, by_tokens)


def check_admission(
    config: SchedulerConfig, drain: DrainRate, load: QueueLoad, *, num_requests: int, num_tokens: int
) -> None:
    """Raise QueueFull when `num_requests` more requests holding `num_tokens` prompt tokens do not fit in
    the waiting queue, or would wait longer than `max_queue_wait_ms` to be scheduled."""
    max_requests, max_tokens = config.max_waiting_requests, config.max_waiting_tokens
    queued = load.queued_requests
    excess_requests = 0 if max_requests is None else queued + num_requests - max_requests
    excess_tokens = 0
    if max_tokens is not None and queued > 0:  # an empty queue takes any request
        excess_tokens = load.waiting_tokens + num_tokens - max_tokens
    if excess_requests > 0 or excess_tokens > 0:
        retry_after = drain.seconds_to_drain(excess_requests, excess_tokens)
        what = (
            f"{queued} requests waiting (at most {max_requests})"
            if excess_requests > 0
            else f"{load.waiting_tokens} tokens waiting (at most {max_tokens})"
        )
        raise QueueFull(
            f"the model's queue is full: {what}; retry in {retry_after:.2f} s", retry_after_s=retry_after
        )
    if config.max_queue_wait_ms is None:
        return
    bound = config.max_queue_wait_ms / 1000
    wait = expected_wait_s(drain, load, num_requests, num_tokens)
    # No estimate before the queue first drained: the count bounds above are the only ones until then.
    if wait is None or wait <= bound:
        return
    retry_after = min(wait - bound, MAX_SECONDS_TO_DRAIN)
    raise QueueFull(
        f"the model's queue is full: expected wait {wait * 1000:.0f} ms (at most "
        f"{config.max_queue_wait_ms:g} ms); retry in {retry_after:.2f} s",
        retry_after_s=max(retry_after, 0.001),
    )
