"""How fast a queue drains: requests (and tokens) leaving it per second of busy time, over a sliding window.

One measure for every queue that answers "how long until the work ahead is done": the dynamic batcher's
Retry-After (requests completed per second of execution), the LLM engine's admission by expected wait and its
Retry-After (requests and prompt tokens leaving the waiting queue per second of backlog), and an LLM version's
concurrency cap (requests completed per second). Only busy time is recorded: an idle queue's time says
nothing about its speed.
"""

from __future__ import annotations

from collections import deque

DEFAULT_SECONDS_TO_DRAIN = 1.0
"""The answer before anything was measured."""
MAX_SECONDS_TO_DRAIN = 60.0
"""The longest answer (a Retry-After past a minute helps nobody)."""


class DrainRate:
    """Requests and tokens drained per second, over the last `window_s` recorded seconds.

    Written by one thread; the rates read running sums, so another thread may read them (a value at most
    one record stale)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._intervals: deque[tuple[float, int, int]] = deque()
        self._seconds = 0.0
        self._requests = 0
        self._tokens = 0

    def record(self, seconds: float, requests: int, tokens: int = 0) -> None:
        """`requests` holding `tokens` drained during `seconds` of busy time. Work that ran `parallel`
        executions side by side records `seconds / parallel`."""
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
        """Whether any request drained yet (before, the rates are 0)."""
        return self._seconds > 0 and self._requests > 0

    @property
    def requests_per_s(self) -> float:
        return self._requests / self._seconds if self._seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self._tokens / self._seconds if self._seconds > 0 else 0.0

    def seconds_to_drain(self, requests: int, tokens: int = 0) -> float:
        """How long until `requests` requests and `tokens` tokens have drained: the longer of the two, at
        least 1 ms, at most `MAX_SECONDS_TO_DRAIN`; `DEFAULT_SECONDS_TO_DRAIN` before any measurement."""
        if not self.measured:
            return DEFAULT_SECONDS_TO_DRAIN
        waits = [0.0]
        for amount, rate in ((requests, self.requests_per_s), (tokens, self.tokens_per_s)):
            if amount > 0:
                waits.append(amount / rate if rate > 0 else MAX_SECONDS_TO_DRAIN)
        return min(max(max(waits), 0.001), MAX_SECONDS_TO_DRAIN)
