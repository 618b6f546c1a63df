"""The batch queue: which queued requests form the next batch, and when. Plain Python, no I/O, no clock.

The driver (`batcher.py`) asks `next_batch(now)` whenever an execution slot is free; the answer is a batch to
run now or None, and `wake_at()` says when the answer may change without new arrivals. Keeping time out of
this module lets property tests simulate any interleaving exactly.

Priorities: each item has a tier (0 = interactive, 1 = batch) and a priority level (1 = first); the queue
serves the interactive tier before the batch tier and, within a tier, level 1 before level 2 and so on, each
(tier, level) first in, first out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

TIER_COUNT = 2
"""Tiers: 0 = interactive, 1 = batch."""


@dataclass(frozen=True)
class BatchPolicy:
    """How one model version batches."""

    max_batch_size: int
    """Most rows in a batch; 0 means the model has no batching dimension (one request per batch)."""
    batching: bool = True
    """Dynamic batching on: several requests may share a batch."""
    max_queue_delay_s: float = 0.0
    """Longest the oldest request of a batch waits for more to join it."""
    preferred_batch_sizes: tuple[int, ...] = ()
    """Row counts dispatched as soon as they are formed."""
    max_queue_size: int = 0
    """Queued requests allowed (0 = unbounded)."""
    priority_levels: int = 1
    """Priority levels; 1 is served first."""

    @property
    def joins_requests(self) -> bool:
        return self.batching and self.max_batch_size > 0


@dataclass(eq=False)
class QueuedItem(Generic[T]):
    """A request waiting in the queue."""

    payload: T
    rows: int
    signature: Hashable
    """Requests with equal signatures (same non-batch shapes and dtypes) may share a batch."""
    priority: int
    enqueued_at: float
    deadline: float | None = None
    tier: int = 0
    """0 = interactive, 1 = batch: the whole interactive tier is served first."""
    seq: int = field(default=0)


class BatchQueue(Generic[T]):
    """Per-(tier, priority) FIFO queues and the rule that forms batches from them."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._levels: list[deque[QueuedItem[T]]] = [
            deque() for _ in range(TIER_COUNT * policy.priority_levels)
        ]
        self._count = 0
        self._seq = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[QueuedItem[T]]:
        for level in self._levels:
            yield from level

    def push(self, item: QueuedItem[T]) -> bool:
        """Queue `item`; False (and nothing queued) when the queue is full."""
        if self.policy.max_queue_size and self._count >= self.policy.max_queue_size:
            return False
        levels = self.policy.priority_levels
        tier = min(max(item.tier, 0), TIER_COUNT - 1)
        level = tier * levels + min(max(item.priority, 1), levels) - 1
        self._seq += 1
        item.seq = self._seq
        self._levels[level].append(item)
        self._count += 1
        return True

    def remove(self, item: QueuedItem[T]) -> bool:
        """Take `item` out (its client gave up); False if it was not queued."""
        for level in self._levels:
            try:
                level.remove(item)
            except ValueError:
                continue
            self._count -= 1
            return True
        return False

    def clear(self) -> list[QueuedItem[T]]:
        """Remove and return every queued item."""
        items = list(self)
        for level in self._levels:
            level.clear()
        self._count = 0
        return items

    def pop_expired(self, now: float) -> list[QueuedItem[T]]:
        """Remove and return every item whose deadline is at or before `now`."""
        expired: list[QueuedItem[T]] = []
        for i, level in enumerate(self._levels):
            if any(it.deadline is not None and it.deadline <= now for it in level):
                keep: deque[QueuedItem[T]] = deque()
                for it in level:
                    (expired if it.deadline is not None and it.deadline <= now else keep).append(it)
                self._levels[i] = keep
        self._count -= len(expired)
        return expired

    def next_batch(self, now: float) -> list[QueuedItem[T]] | None:
        """The batch to run at `now`, removed from the queue, or None to keep waiting."""
        if not self._count:
            return None
        policy = self.policy
        if not policy.joins_requests:
            return [self._take_head()]
        for candidate, oldest in self._candidates():
            rows = sum(it.rows for it in candidate)
            if (
                rows >= policy.max_batch_size
                or rows in policy.preferred_batch_sizes
                or now >= oldest + policy.max_queue_delay_s
            ):
                self._remove_all(candidate)
                return candidate
        return None

    def wake_at(self, slot_free: bool = True) -> float | None:
        """The earliest time `next_batch` or `pop_expired` may answer differently with no new arrivals.

        With no free execution slot only deadlines matter (expired requests fail at once).
        """
        times = [it.deadline for it in self if it.deadline is not None]
        if slot_free and self.policy.joins_requests and self._count:
            times.append(min(it.enqueued_at for it in self) + self.policy.max_queue_delay_s)
        return min(times) if times else None

    def _take_head(self) -> QueuedItem[T]:
        for level in self._levels:
            if level:
                self._count -= 1
                return level.popleft()
        raise IndexError("empty queue")  # pragma: no cover - guarded by the caller

    def _candidates(self) -> Iterator[tuple[list[QueuedItem[T]], float]]:
        """One candidate batch per signature, in the order of each signature's first item, with the arrival
        time of the signature's oldest queued item (in the batch or left out because it did not fit)."""
        limit = self.policy.max_batch_size
        groups: dict[Hashable, list[QueuedItem[T]]] = {}
        rows: dict[Hashable, int] = {}
        oldest: dict[Hashable, float] = {}
        for it in self:
            group = groups.setdefault(it.signature, [])
            oldest[it.signature] = min(oldest.get(it.signature, it.enqueued_at), it.enqueued_at)
            used = rows.get(it.signature, 0)
            # The group's first item always goes in (even when it alone is larger than the limit, which
            # validation prevents); later items join while they fit.
            if not group or used + it.rows <= limit:
                group.append(it)
                rows[it.signature] = used + it.rows
        for signature, group in groups.items():
            yield group, oldest[signature]

    def _remove_all(self, batch: list[QueuedItem[T]]) -> None:
        chosen = {id(it) for it in batch}
        for i, level in enumerate(self._levels):
            if any(id(it) in chosen for it in level):
                self._levels[i] = deque(it for it in level if id(it) not in chosen)
        self._count -= len(batch)
