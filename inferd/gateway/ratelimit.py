"""Per-minute rate limits as token buckets, and concurrency counters.

A limit of N per minute is a bucket of capacity N refilled at N/60 per second: a burst of N passes, then
the rate is N per minute. `remaining` and `reset` mirror OpenAI's `x-ratelimit-*` headers (reset = seconds
until the bucket is full again). Checking and taking are separate so a request that any limit refuses
takes nothing from the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inferd.errors import LimitState


@dataclass
class TokenBucket:
    """`capacity` units refilled over 60 seconds."""

    capacity: int
    level: float
    updated: float

    @classmethod
    def full(cls, capacity: int, now: float) -> TokenBucket:
        return cls(capacity, float(capacity), now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(float(self.capacity), self.level + (now - self.updated) * self.capacity / 60.0)
            self.updated = now

    def fits(self, amount: int, now: float) -> bool:
        self._refill(now)
        return amount <= self.level + 1e-9

    def wait_s(self, amount: int, now: float) -> float:
        """Seconds until `amount` fits (infinite when it never can)."""
        self._refill(now)
        if amount > self.capacity:
            return float("inf")
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60.0 / self.capacity

    def take(self, amount: int, now: float) -> None:
        self._refill(now)
        self.level -= amount

    def give_back(self, amount: int, now: float) -> None:
        self._refill(now)
        self.level = min(float(self.capacity), self.level + amount)

    def state(self, now: float) -> LimitState:
        self._refill(now)
        return LimitState(*self.report())

    def report(self) -> tuple[int, int, float]:
        """(limit, remaining, seconds until full) as of the last refill: what `x-ratelimit-*` report."""
        level = max(self.level, 0.0)
        return self.capacity, int(level), (self.capacity - level) * 60.0 / self.capacity


class Buckets:
    """Token buckets by (owner, kind), created full on first use and resized when a limit changes."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def get(self, owner: str, kind: str, capacity: int, now: float) -> TokenBucket:
        bucket = self._buckets.get((owner, kind))
        if bucket is None:
            bucket = self._buckets[(owner, kind)] = TokenBucket.full(capacity, now)
        elif bucket.capacity != capacity:
            bucket._refill(now)
            bucket.level = min(bucket.level, float(capacity))
            bucket.capacity = capacity
        return bucket


class InFlight:
    """One owner's requests in flight. An admission plan holds its owners' counters, so admitting and
    settling a request touch no dictionary."""

    def __init__(self) -> None:
        self.n = 0


class Concurrency:
    """Requests in flight per owner (a key or a tenant: the counters are as many as the configured keys and
    tenants, and are kept while the server runs, since a plan may hold them)."""

    def __init__(self) -> None:
        self._slots: dict[str, InFlight] = {}

    def slot(self, owner: str) -> InFlight:
        found = self._slots.get(owner)
        if found is None:
            found = self._slots[owner] = InFlight()
        return found

    def current(self, owner: str) -> int:
        found = self._slots.get(owner)
        return 0 if found is None else found.n

    def enter(self, owner: str) -> None:
        self.slot(owner).n += 1

    def leave(self, owner: str) -> None:
        found = self.slot(owner)
        if found.n > 0:
            found.n -= 1

    def total(self) -> int:
        return sum(s.n for s in self._slots.values())


Take = tuple[str, str, TokenBucket, int]
"""(owner, `requests` or `tokens`, its bucket, amount): one bucket a request is checked against."""


def tightest(taken: Sequence[Take], now: float) -> dict[str, TokenBucket]:
    """Per kind, the bucket with the fewest units left of the key's and the tenant's (refilled to `now`):
    the one the `x-ratelimit-*` headers report."""
    found: dict[str, TokenBucket] = {}
    for _, kind, bucket, _ in taken:
        bucket._refill(now)
        other = found.get(kind)
        if other is None or int(max(bucket.level, 0.0)) < int(max(other.level, 0.0)):
            found[kind] = bucket
    return found


def limit_states(taken: Sequence[Take], now: float) -> dict[str, LimitState]:
    """The tighter of the key's and the tenant's state per kind (what a refusal reports)."""
    return {kind: bucket.state(now) for kind, bucket in tightest(taken, now).items()}
