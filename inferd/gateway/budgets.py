"""Exact budget accounting: settled usage plus in-flight reservations, per tenant and per workflow.

Every admitted request reserves an upper bound of what it can spend (tokens: prompt + its completion cap;
cost: the price of that; one request) before any work starts, and settles its actual usage when it ends
(or releases the reservation when it fails before using anything). A reservation is granted iff, for every
budget that applies, settled + in flight + this reservation ≤ the cap. Since actual usage never exceeds the
reservation, settled usage never exceeds a budget, however many requests run at once; and no request is
refused while it fits. All of it runs on the event loop, so check-and-reserve is atomic.

Counters are kept for every period (UTC day, UTC month, all time) of every tenant and workflow, whether or
not a budget exists yet, so a budget set at run time applies at once to usage already settled. At start
the settled counters are rebuilt from the usage ledger (`load`).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from inferd.store.records import PERIODS, Budget, Period

ALL_WORKFLOWS = "\x00all"
"""The workflow slot of a tenant's own counters."""


@dataclass(frozen=True)
class Amount:
    tokens: int = 0
    cost_micros: int = 0
    requests: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(
            self.tokens + other.tokens,
            self.cost_micros + other.cost_micros,
            self.requests + other.requests,
        )

    def __sub__(self, other: Amount) -> Amount:
        return Amount(
            self.tokens - other.tokens,
            self.cost_micros - other.cost_micros,
            self.requests - other.requests,
        )


ZERO = Amount()
CounterKey = tuple[str, str, Period, float]
"""(tenant, workflow or ALL_WORKFLOWS, period, period start)."""


def period_start(period: Period, now: float) -> float:
    """Start (unix time) of the UTC period holding `now`."""
    if period == "total":
        return 0.0
    t = time.gmtime(now)
    if period == "day":
        return float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)))
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))


def period_end(period: Period, now: float) -> float | None:
    if period == "total":
        return None
    t = time.gmtime(now)
    if period == "day":
        return period_start("day", now) + 86400.0
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return float(calendar.timegm((year, month, 1, 0, 0, 0)))


def _keys(tenant: str, workflow: str, now: float) -> list[CounterKey]:
    slots = [ALL_WORKFLOWS, workflow] if workflow else [ALL_WORKFLOWS]
    return [(tenant, w, p, period_start(p, now)) for w in slots for p in PERIODS]


@dataclass
class Reservation:
    tenant: str
    workflow: str
    amount: Amount
    keys: list[CounterKey] = field(default_factory=list)
    open: bool = True


@dataclass(frozen=True)
class Refusal:
    """Which budget refused, for the client's message and the audit log."""

    budget: Budget
    dimension: str
    """`tokens`, `cost` or `requests`."""
    used: int
    in_flight: int
    cap: int
    asked: int


class BudgetBook:
    """Settled and reserved amounts per counter."""

    def __init__(self) -> None:
        self._settled: dict[CounterKey, Amount] = {}
        self._reserved: dict[CounterKey, Amount] = {}

    def load(self, sums: Iterable[tuple[Period, float, str, str, Amount]]) -> None:
        """Settled usage from the ledger: (period, period start, tenant, workflow, amount) per row."""
        for period, start, tenant, workflow, amount in sums:
            for slot in [ALL_WORKFLOWS, workflow] if workflow else [ALL_WORKFLOWS]:
                key = (tenant, slot, period, start)
                self._settled[key] = self._settled.get(key, ZERO) + amount

    def settled(self, tenant: str, workflow: str, period: Period, now: float) -> Amount:
        return self._settled.get((tenant, workflow or ALL_WORKFLOWS, period, period_start(period, now)), ZERO)

    def reserved(self, tenant: str, workflow: str, period: Period, now: float) -> Amount:
        return self._reserved.get(
            (tenant, workflow or ALL_WORKFLOWS, period, period_start(period, now)), ZERO
        )

    def check(
        self, tenant: str, workflow: str, budgets: Sequence[Budget], amount: Amount, now: float
    ) -> Refusal | None:
        """The first budget that `amount` would overrun, or None when it fits all."""
        for budget in budgets:
            if budget.scope == "workflow" and not workflow:
                continue
            slot = workflow if budget.scope == "workflow" else ALL_WORKFLOWS
            key = (tenant, slot, budget.period, period_start(budget.period, now))
            used = self._settled.get(key, ZERO)
            held = self._reserved.get(key, ZERO)
            for dimension, cap, u, h, a in (
                ("tokens", budget.max_tokens, used.tokens, held.tokens, amount.tokens),
                ("cost", budget.max_cost_micros, used.cost_micros, held.cost_micros, amount.cost_micros),
                ("requests", budget.max_requests, used.requests, held.requests, amount.requests),
            ):
                if cap is not None and u + h + a > cap:
                    return Refusal(budget, dimension, u, h, cap, a)
        return None

    def reserve(self, tenant: str, workflow: str, amount: Amount, now: float) -> Reservation:
        """Hold `amount` (call after `check` said it fits)."""
        keys = _keys(tenant, workflow, now)
        for key in keys:
            self._reserved[key] = self._reserved.get(key, ZERO) + amount
        return Reservation(tenant, workflow, amount, keys)

    def settle(self, reservation: Reservation, actual: Amount, now: float) -> None:
        """Replace the reservation by the actual amount (settled in the periods holding `now`)."""
        self.release(reservation)
        for key in _keys(reservation.tenant, reservation.workflow, now):
            self._settled[key] = self._settled.get(key, ZERO) + actual

    def release(self, reservation: Reservation) -> None:
        if not reservation.open:
            return
        reservation.open = False
        for key in reservation.keys:
            left = self._reserved.get(key, ZERO) - reservation.amount
            if left == ZERO:
                self._reserved.pop(key, None)
            else:
                self._reserved[key] = left

    def in_flight(self) -> Amount:
        """Everything reserved now (summed over tenants' all-time counters)."""
        total = ZERO
        for (_, slot, period, _), amount in self._reserved.items():
            if slot == ALL_WORKFLOWS and period == "total":
                total = total + amount
        return total
