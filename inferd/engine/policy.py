"""Scheduling policy: the order requests are served in, and which running request loses its blocks.

The waiting queue orders requests in three levels: service tier first (`EngineRequest.priority`, lower
first), then tenant (the one with the least service received, as its fair-share counter says), then the
policy's order within one tenant. A policy decides that last order and the preemption victims; tiers and
fair sharing belong to the scheduler.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
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


class WaitingQueue:
    """Waiting requests by tier and tenant, each tenant's in policy order; counts their tokens."""

    def __init__(self, policy: SchedulingPolicy) -> None:
        self._policy = policy
        self._lanes: dict[int, dict[str, RequestQueue]] = {}
        """tier → tenant → that tenant's waiting requests of that tier."""
        self._tier_of: dict[str, int] = {}
        self._num_tokens = 0
        self._num_single_token = 0
        self._per_tenant: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._tier_of)

    def __contains__(self, request: EngineRequest) -> bool:
        return request.request_id in self._tier_of

    def __iter__(self) -> Iterator[EngineRequest]:
        """Every waiting request: by tier, then tenant name, then policy order (not the fair order)."""
        lanes = self._lanes
        return iter([r for tier in sorted(lanes) for t in sorted(lanes[tier]) for r in lanes[tier][t]])

    @property
    def num_tokens(self) -> int:
        """Tokens the waiting requests have to compute (prompts, and outputs of preempted requests)."""
        return self._num_tokens

    @property
    def num_single_token(self) -> int:
        """Waiting requests with a single token to compute (1-token prompts): they start like a decode."""
        return self._num_single_token

    @property
    def num_tenants(self) -> int:
        """Tenants with waiting requests."""
        return len(self._per_tenant)

    def has_tenant(self, tenant: str) -> bool:
        return tenant in self._per_tenant

    def add(self, request: EngineRequest) -> None:
        tenants = self._lanes.setdefault(request.priority, {})
        lane = tenants.get(request.tenant)
        if lane is None:
            lane = tenants[request.tenant] = RequestQueue(self._policy)
        lane.add(request)
        self._tier_of[request.request_id] = request.priority
        self._num_tokens += request.num_tokens
        self._num_single_token += request.num_tokens == 1
        self._per_tenant[request.tenant] = self._per_tenant.get(request.tenant, 0) + 1

    def remove(self, request: EngineRequest) -> None:
        tier = self._tier_of.pop(request.request_id)
        tenants = self._lanes[tier]
        lane = tenants[request.tenant]
        lane.remove(request)
        if not len(lane):
            del tenants[request.tenant]
            if not tenants:
                del self._lanes[tier]
        self._num_tokens -= request.num_tokens
        self._num_single_token -= request.num_tokens == 1
        left = self._per_tenant[request.tenant] - 1
        if left:
            self._per_tenant[request.tenant] = left
        else:
            del self._per_tenant[request.tenant]

    def fair_order(self, rank: Callable[[str], tuple[float, ...]]) -> Iterator[EngineRequest]:
        """The order to admit in: every request of a more important tier first; within a tier, next the head
        of the tenant of lowest `rank` (its service counter, then its load), asked again before each request
        (admitting one charges its tenant), ties to the head first in policy order. Iterates over a
        snapshot: the caller may remove the request just yielded or add requests, which this pass then does
        not see."""
        for tier in sorted(self._lanes):
            lanes = {tenant: list(lane) for tenant, lane in self._lanes[tier].items()}
            heads = dict.fromkeys(lanes, 0)
            while heads:
                tenant = min(
                    heads,
                    key=lambda t: (rank(t), self._policy.sort_key(lanes[t][heads[t]]), t),
                )
                i = heads[tenant]
                if i + 1 < len(lanes[tenant]):
                    heads[tenant] = i + 1
                else:
                    del heads[tenant]
                yield lanes[tenant][i]
