"""BudgetBook and period arithmetic: the cases the state machine reaches only by luck, pinned down."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.errors import QuotaExceeded, RateLimited
from inferd.gateway.budgets import ZERO, Amount, BudgetBook, period_end, period_start
from inferd.gateway.governance import Consumed, Demand
from inferd.store.records import ApiKey, Budget, Limits, Tenant
from inferd.store.sqlite import SqliteStore
from tests.gateway.helpers import FakeClock, ctx, new_governance, utc


def test_period_starts_and_ends_in_utc() -> None:
    t = utc(2024, 2, 29, 23, 59, 59)
    assert period_start("day", t) == utc(2024, 2, 29)
    assert period_end("day", t) == utc(2024, 3, 1)
    assert period_start("month", t) == utc(2024, 2, 1)
    assert period_end("month", t) == utc(2024, 3, 1)
    assert period_start("total", t) == 0.0
    assert period_end("total", t) is None
    assert period_end("month", utc(2024, 12, 31, 12)) == utc(2025, 1, 1)
    assert period_start("day", utc(2024, 3, 1)) == utc(2024, 3, 1)


def test_a_reservation_made_before_midnight_counts_against_the_new_day() -> None:
    """A request admitted at 23:59:59 settles after midnight, into the new day: while it runs, the new day's
    budget must see it in flight, or a second request fills the same budget and both settle over it."""
    book = BudgetBook()
    daily = [Budget("t", "tenant", "day", max_tokens=100)]
    before = utc(2024, 5, 1, 23, 59, 59)
    after = before + 2
    asked = Amount(100, 0, 1)
    assert book.check("t", "", daily, asked, before) is None
    first = book.reserve("t", "", asked, before)
    refusal = book.check("t", "", daily, asked, after)
    assert refusal is not None and (refusal.used, refusal.in_flight, refusal.asked) == (0, 100, 100)
    book.settle(first, asked, after)
    assert book.settled("t", "", "day", after) == asked
    assert book.settled("t", "", "day", before) == ZERO
    assert book.check("t", "", daily, Amount(1, 0, 1), after) is not None
    assert book.in_flight() == ZERO


def test_workflow_budgets_cap_each_workflow_and_skip_requests_without_one() -> None:
    book = BudgetBook()
    now = utc(2024, 5, 2, 10)
    per_workflow = [Budget("t", "workflow", "total", max_requests=1)]
    one = Amount(0, 0, 1)
    book.settle(book.reserve("t", "a", one, now), one, now)
    refusal = book.check("t", "a", per_workflow, one, now)
    assert refusal is not None and refusal.dimension == "requests" and refusal.budget.scope == "workflow"
    assert book.check("t", "b", per_workflow, one, now) is None
    assert book.check("t", "", per_workflow, one, now) is None
    assert book.settled("t", "", "total", now) == one
    assert book.settled("t", "a", "total", now) == one
    assert book.settled("t", "b", "total", now) == ZERO


def test_refusal_names_the_dimension_and_its_numbers() -> None:
    book = BudgetBook()
    now = utc(2024, 5, 2, 10)
    budgets = [Budget("t", "tenant", "month", max_tokens=1000, max_cost_micros=50)]
    held = book.reserve("t", "", Amount(10, 40, 1), now)
    refusal = book.check("t", "", budgets, Amount(10, 11, 1), now)
    assert refusal is not None
    assert (refusal.dimension, refusal.used, refusal.in_flight, refusal.cap, refusal.asked) == (
        "cost", 0, 40, 50, 11,
    )  # fmt: skip
    assert book.check("t", "", budgets, Amount(10, 10, 1), now) is None
    book.release(held)
    book.release(held)
    assert book.reserved("t", "", "month", now) == ZERO
    assert book.in_flight() == ZERO


def test_load_adds_ledger_sums_to_the_tenant_and_workflow_counters() -> None:
    book = BudgetBook()
    now = utc(2024, 5, 2, 10)
    day = period_start("day", now)
    book.load([("day", day, "t", "a", Amount(5, 7, 1)), ("day", day, "t", "", Amount(1, 1, 1))])
    assert book.settled("t", "", "day", now) == Amount(6, 8, 2)
    assert book.settled("t", "a", "day", now) == Amount(5, 7, 1)
    assert book.settled("t", "", "day", now + 86400) == ZERO


async def test_a_key_revoked_while_its_call_runs_still_spends_from_its_tenants_budget(tmp_path: Path) -> None:
    """Authentication and admission are apart (the prompt is tokenized in between) and a reload can land
    there: the tenant's budgets and limits still apply to a key that is gone by then."""
    store = SqliteStore(tmp_path)
    store.put_tenant(Tenant("t"))
    store.put_key(ApiKey("0123456789ab", "t", "h"))
    store.put_budget(Budget("t", "tenant", "total", max_requests=1))
    gov = new_governance(store, FakeClock())
    try:
        lease = gov.admit(ctx("t", "0123456789ab", "r1"), "m", "1", Demand(1, 1), "")
        store.delete_key("0123456789ab")
        gov.reload_soon()
        gov.settle(lease, Consumed(1, 1), None)
        with pytest.raises(QuotaExceeded):
            gov.admit(ctx("t", "0123456789ab", "r2"), "m", "1", Demand(1, 1), "")
        store.put_budget(Budget("t", "tenant", "total", max_requests=5))
        store.put_tenant(Tenant("t", Limits(rpm=1)))
        gov.reload_soon()
        gov.admit(ctx("t", "0123456789ab", "r3"), "m", "1", Demand(1, 1), "")
        with pytest.raises(RateLimited):
            gov.admit(ctx("t", "0123456789ab", "r4"), "m", "1", Demand(1, 1), "")
    finally:
        await gov.close()
