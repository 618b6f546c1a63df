"""Fair sharing between tenants: virtual token counters (VTC; Sheng et al., "Fairness in Serving Large
Language Models", OSDI 2024).

Each tenant has a counter of the service it received: every computed prompt token adds `prefill_token_cost`,
every generated token `decode_token_cost`, divided by the tenant's weight. The scheduler admits waiting
requests from the tenant with the lowest counter first, so a tenant flooding the engine is served only once
the others have caught up with it. A tenant that becomes active (its first unfinished request) is lifted to
the lowest counter of the active tenants, so that idling cannot bank credit; with no tenant active, to the
counter of the tenant served last. Recomputing tokens after a preemption is the engine's doing and is not
charged.

Plain Python, owned by the scheduler's one thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from inferd.engine.config import FairnessConfig
from inferd.engine.request import EngineRequest


class FairShare:
    """The virtual token counters of every tenant seen."""

    def __init__(self, config: FairnessConfig) -> None:
        self.config = config
        self._counters: dict[str, float] = {}
        self._last_served = 0.0
        """Counter of the tenant charged last: the floor of a tenant that arrives while none is active."""

    def weight(self, tenant: str) -> float:
        return self.config.tenant_weights.get(tenant, self.config.default_weight)

    def counter(self, tenant: str) -> float:
        """Service `tenant` received, in weighted tokens (after lifts)."""
        return self._counters.get(tenant, 0.0)

    @property
    def counters(self) -> Mapping[str, float]:
        """Every tenant's counter (read-only view)."""
        return self._counters

    def activate(self, tenant: str, active: Iterable[str]) -> None:
        """`tenant` has its first unfinished request; `active` are the tenants that already had one."""
        floor = min((self.counter(t) for t in active if t != tenant), default=self._last_served)
        if self.counter(tenant) < floor:
            self._counters[tenant] = floor

    def charge(self, request: EngineRequest, start: int, num_tokens: int) -> None:
        """`request` computes positions `start .. start + num_tokens` this step (and samples one token when
        they reach its end): charge the prompt positions not charged before, and the sampled token."""
        end = start + num_tokens
        first_new = max(start, request.num_charged_tokens)
        prompt_tokens = max(0, min(end, request.num_prompt_tokens) - first_new)
        request.num_charged_tokens = max(request.num_charged_tokens, end)
        sampled = 1 if end == request.num_tokens else 0
        cost = prompt_tokens * self.config.prefill_token_cost + sampled * self.config.decode_token_cost
        if cost:
            value = self.counter(request.tenant) + cost / self.weight(request.tenant)
            self._counters[request.tenant] = value
            self._last_served = value
