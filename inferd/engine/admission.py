"""Admission control of the engine's waiting queue: its bounds, and how long a refused client should wait.

A new request is refused at once (`QueueFull`, a `ResourceExhausted`) when queuing it would put more
requests or tokens in the waiting queue than the scheduler's bounds allow. The refusal's `retry_after_s`
is the time the engine needs to drain the excess at the rate it measured: requests and tokens leaving the
waiting queue per second, over the last seconds in which the queue was not empty (an idle engine's time
says nothing about its speed).
"""

from __future__ import annotations

from collections import deque

from inferd.engine.config import SchedulerConfig
from inferd.errors import QueueFull

DEFAULT_RETRY_AFTER_S = 1.0
"""The answer before any drain was measured."""
MAX_RETRY_AFTER_S = 60.0


class DrainRate:
    """Requests and tokens that left the waiting queue per second of backlog, over a sliding window.

    Written by the engine thread; `requests_per_s` and `tokens_per_s` read running sums, so another thread
    may read them (a value at most one interval stale)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._intervals: deque[tuple[float, int, int]] = deque()
        self._seconds = 0.0
        self._requests = 0
        self._tokens = 0

    def record(self, seconds: float, requests: int, tokens: int) -> None:
        """`requests` holding `tokens` left the queue during `seconds` in which it was not empty."""
        self._intervals.append((seconds, requests, tokens))
        self._seconds += seconds
        self._requests += requests
        self._tokens += tokens
        while len(self._intervals) > 1 and self._seconds - self._intervals[0][0] >= self.window_s:
            old_s, old_r, old_t = self._intervals.popleft()
            self._seconds -= old_s
            self._requests -= old_r
            self._tokens -= old_t

    @property
    def measured(self) -> bool:
        return self._seconds > 0

    @property
    def requests_per_s(self) -> float:
        return self._requests / self._seconds if self._seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self._tokens / self._seconds if self._seconds > 0 else 0.0

    def seconds_to_drain(self, requests: int, tokens: int) -> float:
        """How long until `requests` requests and `tokens` tokens have left the queue (bounded)."""
        if not self.measured:
            return DEFAULT_RETRY_AFTER_S
        waits = [0.0]
        for excess, rate in ((requests, self.requests_per_s), (tokens, self.tokens_per_s)):
            if excess > 0:
                waits.append(excess / rate if rate > 0 else MAX_RETRY_AFTER_S)
        return min(max(max(waits), 0.001), MAX_RETRY_AFTER_S)


def check_admission(
    config: SchedulerConfig,
    drain: DrainRate,
    *,
    waiting_requests: int,
    waiting_tokens: int,
    num_requests: int,
    num_tokens: int,
) -> None:
    """Raise QueueFull when `num_requests` more requests holding `num_tokens` tokens do not fit in the
    waiting queue that holds `waiting_requests` and `waiting_tokens`."""
    max_requests, max_tokens = config.max_waiting_requests, config.max_waiting_tokens
    excess_requests = 0 if max_requests is None else waiting_requests + num_requests - max_requests
    excess_tokens = 0
    if max_tokens is not None and waiting_requests > 0:  # an empty queue takes any request
        excess_tokens = waiting_tokens + num_tokens - max_tokens
    if excess_requests <= 0 and excess_tokens <= 0:
        return
    retry_after = drain.seconds_to_drain(excess_requests, excess_tokens)
    what = (
        f"{waiting_requests} requests waiting (at most {max_requests})"
        if excess_requests > 0
        else f"{waiting_tokens} tokens waiting (at most {max_tokens})"
    )
    raise QueueFull(
        f"the model's queue is full: {what}; retry in {retry_after:.2f} s", retry_after_s=retry_after
    )
