"""A state machine over Governance.admit / settle / release with a fake clock, against an independent model.

Random tenants, workflows and budgets (tokens, cost, requests; tenant and workflow scope; day, month and
total), random demands, settlement with at most the reservation, releases, a clock that crosses UTC day and
month boundaries, and restarts that rebuild the budgets from the ledger. The model keeps the ledger as a list
of settled events and the open leases, and computes every expected answer itself:

- admission is refused iff, for some budget that applies, settled (this period) + in flight + asked > cap;
- the book's settled counters equal the model's sums, and never exceed a cap of the current period;
- the book's in-flight amounts equal the open leases, and nothing is reserved once every lease ended;
- after a restart the counters rebuilt from the ledger equal the live ones.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from inferd.errors import QuotaExceeded
from inferd.gateway.budgets import ZERO, Amount
from inferd.gateway.governance import Consumed, Demand, Governance, Lease
from inferd.store.records import PERIODS, SCOPES, ApiKey, Budget, Period, Price, Scope, Tenant
from inferd.store.sqlite import SqliteStore
from tests.gateway.helpers import FakeClock, ctx, new_governance, utc

TENANTS = ("t1", "t2")
WORKFLOWS = ("", "wa", "wb")
SLOTS = ("", "wa", "wb")
"""Counter slots the model checks: "" is the tenant's own counter."""
MODEL = "m"
PROMPT_PER_1K, COMPLETION_PER_1K, PER_INFERENCE = 1500, 2500, 700
STARTS = (
    utc(2024, 1, 31, 23, 0),  # a month ends within the hour
    utc(2024, 2, 28, 23, 30),  # a leap day comes next
    utc(2024, 12, 31, 23, 59),  # a year ends within the minute
    utc(2023, 6, 15, 12, 0),
)
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None
"""Where each example's state dir goes: memory when the system has it (a fresh database costs fsyncs)."""
STEPS_S = (0, 1, 59, 600, 3600, 5 * 3600, 86399, 86400, 86401, 20 * 86400)


def model_start(period: Period, t: float) -> float:
    """The UTC period start, computed without the product's code."""
    if period == "total":
        return 0.0
    d = datetime.fromtimestamp(t, UTC)
    return datetime(d.year, d.month, d.day if period == "day" else 1, tzinfo=UTC).timestamp()


PriceSpec = tuple[int, int, int]
"""Micro-units per 1K prompt tokens, per 1K completion tokens, per inference."""


def model_cost(price: PriceSpec, prompt: int, completion: int, inferences: int) -> int:
    def ceil_div(a: int, b: int) -> int:
        return (a + b - 1) // b

    return ceil_div(prompt * price[0], 1000) + ceil_div(completion * price[1], 1000) + inferences * price[2]


@dataclass
class Event:
    time: float
    tenant: str
    workflow: str
    amount: Amount


@dataclass
class OpenLease:
    lease: Lease
    tenant: str
    workflow: str
    demand: Demand
    reserved: Amount


BudgetSpecs = dict[tuple[Scope, Period], tuple[int | None, int | None, int | None]]
caps = st.tuples(
    st.one_of(st.none(), st.integers(0, 300)),
    st.one_of(st.none(), st.integers(0, 2500)),
    st.one_of(st.none(), st.integers(0, 6)),
)
budget_keys = st.tuples(st.sampled_from(SCOPES), st.sampled_from(PERIODS))
budget_specs = st.dictionaries(budget_keys, caps, max_size=4)
prices = st.tuples(st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 1000))
demands = st.builds(Demand, st.integers(0, 60), st.integers(0, 60), st.integers(0, 2))


class BudgetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="inferd-budgets-", dir=SCRATCH))
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.store = SqliteStore(self.dir)
        self.gov: Governance | None = None
        self.budgets: dict[str, list[Budget]] = {t: [] for t in TENANTS}
        self.unsound: set[Budget] = set()
        """Budgets set below what was already settled or in flight: they cannot hold this period."""
        self.price: PriceSpec = (PROMPT_PER_1K, COMPLETION_PER_1K, PER_INFERENCE)
        self.events: list[Event] = []
        self.open: list[OpenLease] = []
        self.requests = 0
        self.refusals = 0
        self.restarts = 0
        self.events_at_restart = 0

    @initialize(start=st.sampled_from(STARTS), t1=budget_specs, t2=budget_specs)
    def setup(self, start: float, t1: BudgetSpecs, t2: BudgetSpecs) -> None:
        self.clock.now = start
        self.store.put_price(Price(MODEL, PROMPT_PER_1K, COMPLETION_PER_1K, PER_INFERENCE))
        for tenant, spec in (("t1", t1), ("t2", t2)):
            self.store.put_tenant(Tenant(tenant))
            self.store.put_key(ApiKey("k-" + tenant, tenant, "not a hash"))
            for (scope, period), (tokens, cost, requests) in spec.items():
                budget = Budget(tenant, scope, period, tokens, cost, requests)
                self.store.put_budget(budget)
                self.budgets[tenant].append(budget)
        self.gov = new_governance(self.store, self.clock)

    # -- the model -------------------------------------------------------------------------------------

    def settled(self, tenant: str, slot: str, period: Period) -> Amount:
        now = model_start(period, self.clock.now)
        total = ZERO
        for e in self.events:
            if e.tenant == tenant and slot in ("", e.workflow) and model_start(period, e.time) == now:
                total = total + e.amount
        return total

    def in_flight(self, tenant: str, slot: str) -> Amount:
        total = ZERO
        for o in self.open:
            if o.tenant == tenant and slot in ("", o.workflow):
                total = total + o.reserved
        return total

    def overruns(self, tenant: str, workflow: str, asked: Amount) -> set[str]:
        """Scopes of the budgets that `asked` would overrun."""
        scopes: set[str] = set()
        for b in self.budgets[tenant]:
            if b.scope == "workflow" and not workflow:
                continue
            slot = workflow if b.scope == "workflow" else ""
            used, held = self.settled(tenant, slot, b.period), self.in_flight(tenant, slot)
            for cap, u, h, a in (
                (b.max_tokens, used.tokens, held.tokens, asked.tokens),
                (b.max_cost_micros, used.cost_micros, held.cost_micros, asked.cost_micros),
                (b.max_requests, used.requests, held.requests, asked.requests),
            ):
                if cap is not None and u + h + a > cap:
                    scopes.add(b.scope)
        return scopes

    # -- rules -----------------------------------------------------------------------------------------

    @rule(
        calls=st.lists(
            st.tuples(st.sampled_from(TENANTS), st.sampled_from(WORKFLOWS), demands), min_size=1, max_size=4
        )
    )
    def admit(self, calls: list[tuple[str, str, Demand]]) -> None:
        """A few requests arrive at once."""
        for tenant, workflow, demand in calls:
            self.admit_one(tenant, workflow, demand)

    def admit_one(self, tenant: str, workflow: str, demand: Demand) -> None:
        assert self.gov is not None
        asked = Amount(
            demand.tokens,
            model_cost(self.price, demand.prompt_tokens, demand.completion_tokens, demand.inferences),
            1,
        )
        expected = self.overruns(tenant, workflow, asked)
        self.requests += 1
        try:
            lease = self.gov.admit(
                ctx(tenant, "k-" + tenant, f"r{self.requests}"), MODEL, "1", demand, workflow
            )
        except QuotaExceeded as exc:
            self.refusals += 1
            assert expected, f"refused although it fits: {exc}"
            scope = "workflow" if exc.code == "workflow_quota_exceeded" else "tenant"
            assert scope in expected, (exc.code, expected)
            return
        assert not expected, f"admitted although it overruns a {expected} budget"
        assert lease.reservation.amount == asked
        self.open.append(OpenLease(lease, tenant, workflow, demand, asked))

    @precondition(lambda self: self.open)
    @rule(
        pick=st.integers(0, 1000),
        prompt_pct=st.integers(0, 150),
        completion_pct=st.integers(0, 150),
        failed=st.booleans(),
    )
    def settle(self, pick: int, prompt_pct: int, completion_pct: int, failed: bool) -> None:
        assert self.gov is not None
        o = self.open.pop(pick % len(self.open))
        d = o.demand
        # Over 100%: a runtime that reports more than it was allowed; settlement clamps to the reservation.
        consumed = Consumed(d.prompt_tokens * prompt_pct // 100, d.completion_tokens * completion_pct // 100,
                            0, d.inferences)  # fmt: skip
        prompt = min(consumed.prompt_tokens, d.prompt_tokens)
        completion = min(consumed.completion_tokens, d.completion_tokens)
        exc = RuntimeError("runtime failed") if failed else None
        cost = self.gov.settle(o.lease, consumed, exc)
        # Never more than the reservation, also when the price went up since admission.
        charged = min(model_cost(self.price, prompt, completion, d.inferences), o.reserved.cost_micros)
        expected = Amount(prompt + completion, charged, 1)
        assert cost == expected.cost_micros
        self.events.append(Event(self.clock.now, o.tenant, o.workflow, expected))

    @precondition(lambda self: self.open)
    @rule(pick=st.integers(0, 1000))
    def release(self, pick: int) -> None:
        assert self.gov is not None
        o = self.open.pop(pick % len(self.open))
        self.gov.release(o.lease)
        self.gov.release(o.lease)  # twice: a no-op

    @rule(tenant=st.sampled_from(TENANTS), key=budget_keys, limits=caps)
    def set_budget(self, tenant: str, key: tuple[Scope, Period], limits: tuple[int | None, ...]) -> None:
        """An operator sets (or replaces) a budget at run time; it applies at once to what is settled."""
        assert self.gov is not None
        budget = Budget(tenant, *key, *limits)
        self.store.put_budget(budget)
        self.gov.reload_soon()
        self.budgets[tenant] = [b for b in self.budgets[tenant] if (b.scope, b.period) != key] + [budget]
        for slot in ("wa", "wb") if budget.scope == "workflow" else ("",):
            used = self.settled(tenant, slot, budget.period) + self.in_flight(tenant, slot)
            for cap, value in zip(limits, (used.tokens, used.cost_micros, used.requests), strict=True):
                if cap is not None and value > cap:
                    self.unsound.add(budget)

    @precondition(lambda self: any(self.budgets.values()))
    @rule(pick=st.integers(0, 1000))
    def delete_budget(self, pick: int) -> None:
        assert self.gov is not None
        every = [b for t in TENANTS for b in self.budgets[t]]
        budget = every[pick % len(every)]
        assert self.store.delete_budget(budget.tenant, budget.scope, budget.period)
        self.gov.reload_soon()
        self.budgets[budget.tenant].remove(budget)

    @rule(price=prices)
    def set_price(self, price: PriceSpec) -> None:
        assert self.gov is not None
        self.store.put_price(Price(MODEL, *price))
        self.gov.reload_soon()
        self.price = price

    @rule(seconds=st.one_of(st.sampled_from(STEPS_S), st.integers(0, 3 * 86400)))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: len(self.events) > self.events_at_restart)
    @rule()
    def restart(self) -> None:
        """The process dies (open leases never settle) and a new one rebuilds budgets from the ledger."""
        assert self.gov is not None
        live = self.counters(self.gov)
        self.loop.run_until_complete(self.gov.close())
        self.open.clear()
        self.store = SqliteStore(self.dir)
        self.gov = new_governance(self.store, self.clock)
        self.restarts += 1
        self.events_at_restart = len(self.events)
        assert self.counters(self.gov) == live

    def counters(self, gov: Governance) -> dict[tuple[str, str, Period], Amount]:
        return {
            (t, s, p): gov.book.settled(t, s, p, self.clock.now)
            for t in TENANTS
            for s in SLOTS
            for p in PERIODS
        }

    # -- invariants ------------------------------------------------------------------------------------

    @invariant()
    def settled_matches_model(self) -> None:
        if self.gov is None:
            return
        for (tenant, slot, period), amount in self.counters(self.gov).items():
            assert amount == self.settled(tenant, slot, period), (tenant, slot, period)

    @invariant()
    def settled_within_caps(self) -> None:
        for tenant, budgets in self.budgets.items():
            for b in budgets:
                if b in self.unsound:
                    continue
                for slot in ("wa", "wb") if b.scope == "workflow" else ("",):
                    used = self.settled(tenant, slot, b.period)
                    for cap, value in (
                        (b.max_tokens, used.tokens),
                        (b.max_cost_micros, used.cost_micros),
                        (b.max_requests, used.requests),
                    ):
                        assert cap is None or value <= cap, (b, slot, used)

    @invariant()
    def in_flight_matches_open_leases(self) -> None:
        if self.gov is None:
            return
        now = self.clock.now
        for tenant in TENANTS:
            for slot in SLOTS:
                for period in PERIODS:
                    assert self.gov.book.reserved(tenant, slot, period, now) == self.in_flight(tenant, slot)
        if not self.open:
            assert self.gov.book.in_flight() == ZERO
            assert self.gov.concurrency.total() == 0

    def teardown(self) -> None:
        if self.gov is not None:
            self.loop.run_until_complete(self.gov.close())
        else:
            self.store.close()
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        STATS.append((self.requests, self.refusals, self.restarts))


STATS: list[tuple[int, int, int]] = []

BudgetMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBudgetMachine = BudgetMachine.TestCase


@pytest.fixture(autouse=True, scope="module")
def _report_coverage() -> object:
    """The machine must exercise both outcomes of admission (else its exactness check proves little)."""
    yield
    if STATS:
        assert sum(s[0] for s in STATS) > sum(s[1] for s in STATS) > 0
