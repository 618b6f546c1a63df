"""Scheduling policy: the order requests are served in, and which running request loses its blocks.

The scheduler asks the policy and nothing else, so priorities, deadlines or per-tenant fair sharing are new
policies, not new scheduler code.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Protocol

from inferd.engine.request import EngineRequest
from inferd.errors import InternalError

SortKey = tuple[float, ...]


class SchedulingPolicy(Protocol):
    """Decides service order and preemption victims."""

    def sort_key(self, request: EngineRequest) -> SortKey:
        """Smaller is served first: running requests are scheduled in this order each step, waiting ones are
        admitted in it. The waiting queue reads a request's key once, when it enters the queue."""
        ...

    def choose_victim(self, candidates: Sequence[EngineRequest]) -> EngineRequest:
        """The running request to preempt when one needs blocks and none are free. `candidates` are the
        running requests not yet scheduled this step, then the one needing blocks (which may preempt itself).
        Must return one of them."""
        ...


class PriorityPolicy:
    """Lower `priority` first, then earlier arrival (plain first-come-first-served when all priorities are
    equal). The victim is the last in that order: the least important request, and among equals the newest,
    which has usually computed the fewest tokens and so loses the least work."""

    def sort_key(self, request: EngineRequest) -> SortKey:
        return (request.priority, request.arrival_time, request.admission_index)

    def choose_victim(self, candidates: Sequence[EngineRequest]) -> EngineRequest:
        return max(candidates, key=self.sort_key)


class FewestComputedVictimPolicy(PriorityPolicy):
    """Serves like `PriorityPolicy`; among the least important candidates preempts the one that computed
    the fewest tokens (the least recompute), rather than the newest."""

    def choose_victim(self, candidates: Sequence[EngineRequest]) -> EngineRequest:
        worst = max(request.priority for request in candidates)
        return min(
            (request for request in candidates if request.priority == worst),
            key=lambda request: (request.num_computed_tokens, -request.admission_index),
        )


class RequestQueue:
    """Waiting requests in policy order (ties broken by admission), with removal from anywhere."""

    def __init__(self, policy: SchedulingPolicy) -> None:
        self._policy = policy
        self._keys: list[tuple[SortKey, int]] = []
        self._requests: list[EngineRequest] = []
        self._key_of: dict[str, tuple[SortKey, int]] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[EngineRequest]:
        return iter(list(self._requests))

    def __contains__(self, request: EngineRequest) -> bool:
        return request.request_id in self._key_of

    def add(self, request: EngineRequest) -> None:
        key = (self._policy.sort_key(request), request.admission_index)
        i = bisect_left(self._keys, key)
        self._keys.insert(i, key)
        self._requests.insert(i, request)
        self._key_of[request.request_id] = key

    def remove(self, request: EngineRequest) -> None:
        key = self._key_of.pop(request.request_id)
        i = bisect_left(self._keys, key)
        if i >= len(self._requests) or self._requests[i] is not request:
            raise InternalError(f"waiting queue lost track of {request.request_id}")
        del self._keys[i]
        del self._requests[i]
