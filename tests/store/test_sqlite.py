"""SqliteStore: migrations, append-only ledger and audit, config_version, usage reports and audit queries."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.store.migrations import MIGRATIONS
from inferd.store.records import ApiKey, AuditEntry, Budget, Price, Tenant, UsageRow
from inferd.store.sqlite import DB_NAME, USAGE_GROUPS, SqliteStore, UsageGroup, connect

DAY = 86400.0
T0 = datetime(2024, 3, 30, 22, tzinfo=UTC).timestamp()
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path)
    yield store
    store.close()


def row(request_id: str, time: float = T0, tenant: str = "t", **fields: Any) -> UsageRow:
    base: dict[str, Any] = {"key_id": "k", "workflow": "", "model": "m", "version": "1", "protocol": "openai"}
    return UsageRow(request_id, time, tenant, **{**base, **fields})


# -- migrations ----------------------------------------------------------------------------------------------


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")
        }
    finally:
        conn.close()


def test_migrations_create_the_schema_and_reopening_is_idempotent(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state")
    assert store.schema_version == len(MIGRATIONS)
    store.put_tenant(Tenant("t"))
    store.append([row("r1")], [AuditEntry(T0, "admin.x")])
    version = store.config_version()
    store.close()
    schema = tables(tmp_path / "state" / DB_NAME)
    assert {"tenants", "api_keys", "budgets", "prices", "usage", "audit", "config_version"} <= schema
    for _ in range(2):
        again = SqliteStore(tmp_path / "state")
        assert again.schema_version == len(MIGRATIONS)
        assert [t.name for t in again.tenants()] == ["t"]
        assert len(again.usage_rows()) == 1
        assert again.config_version() == version
        again.close()
    assert tables(tmp_path / "state" / DB_NAME) == schema
    conn = sqlite3.connect(tmp_path / "state" / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this inferd"):
        SqliteStore(tmp_path)


@pytest.mark.parametrize("table", ["usage", "audit"])
def test_ledger_and_audit_are_append_only(store: SqliteStore, table: str) -> None:
    store.append([row("r1")], [AuditEntry(T0, "admin.x", "t")])
    conn = connect(store.path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"UPDATE {table} SET tenant = 'other'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(f"DELETE FROM {table}")
        assert conn.execute(f"SELECT tenant FROM {table}").fetchall() == [("t",)]
    finally:
        conn.close()


def test_a_failed_append_leaves_nothing_behind(store: SqliteStore) -> None:
    bad = AuditEntry(T0, "admin.x", detail={"not json": object()})
    with pytest.raises(TypeError):
        store.append([row("r1")], [bad])
    assert store.usage_rows() == []
    store.append([row("r2")], [])
    assert [r.request_id for r in store.usage_rows()] == ["r2"]


# -- configuration -------------------------------------------------------------------------------------------


def test_config_version_bumps_on_every_change_also_from_another_connection(
    store: SqliteStore, tmp_path: Path
) -> None:
    cli = SqliteStore(tmp_path)  # what the CLI opens on a running server's state dir
    try:
        changes: list[Callable[[SqliteStore], object]] = [
            lambda s: s.put_tenant(Tenant("t")),
            lambda s: s.put_tenant(Tenant("t", disabled=True)),
            lambda s: s.put_key(ApiKey("0123456789ab", "t", "h")),
            lambda s: s.put_key(ApiKey("0123456789ab", "t", "h", disabled=True)),
            lambda s: s.put_budget(Budget("t", max_tokens=5)),
            lambda s: s.put_budget(Budget("t", max_tokens=6)),
            lambda s: s.put_price(Price("m", 1, 2, 3)),
            lambda s: s.delete_price("m"),
            lambda s: s.delete_budget("t", "tenant", "month"),
            lambda s: s.delete_key("0123456789ab"),
            lambda s: s.delete_tenant("t"),
        ]
        seen = [store.config_version()]
        for i, change in enumerate(changes):
            change(cli if i % 2 else store)
            seen.append(store.config_version())
            assert cli.config_version() == seen[-1]
        assert all(a < b for a, b in itertools.pairwise(seen)), seen
        store.append([row("r1")], [AuditEntry(T0, "admin.x")])
        assert not store.delete_tenant("missing")
        assert store.config_version() == seen[-1]  # ledger, audit and no-op deletes are no changes
    finally:
        cli.close()


def test_records_round_trip_and_tenant_updates_keep_keys_and_budgets(store: SqliteStore) -> None:
    tenant = Tenant("t", payload_logging="full", created=5.0)
    key = ApiKey(
        "0123456789ab", "t", "h", frozenset({"admin", "user"}), ("a-*", "b"), expires_at=9.0, name="n"
    )
    budget = Budget("t", "workflow", "day", 1, 2, 3)
    store.put_tenant(tenant)
    store.put_key(key)
    store.put_budget(budget)
    store.put_price(Price("*", 1, 2, 3))
    assert store.tenants() == [tenant]
    assert store.api_keys() == [key] and store.api_keys("other") == []
    assert store.budgets("t") == [budget]
    assert store.prices() == [Price("*", 1, 2, 3)]
    store.put_tenant(Tenant("t", disabled=True, created=5.0))
    assert store.api_keys("t") == [key] and store.budgets("t") == [budget]
    assert store.delete_tenant("t")
    assert store.api_keys() == [] and store.budgets() == []


# -- usage ---------------------------------------------------------------------------------------------------

rows_strategy: st.SearchStrategy[list[dict[str, Any]]] = st.lists(
    st.builds(
        dict,
        time=st.floats(T0 - 2 * DAY, T0 + 3 * DAY, allow_nan=False),
        tenant=st.sampled_from(["a", "b"]),
        key_id=st.sampled_from(["k1", "k2", "k3"]),
        workflow=st.sampled_from(["", "w1", "w2"]),
        model=st.sampled_from(["m1", "m2"]),
        prompt_tokens=st.integers(0, 1000),
        completion_tokens=st.integers(0, 1000),
        cached_tokens=st.integers(0, 100),
        cost_micros=st.integers(0, 10**6),
        status=st.sampled_from(["ok", "ok", "aborted", "cancelled"]),
        latency_ms=st.floats(0, 1000, allow_nan=False),
        retry_of=st.sampled_from(["", "", "r0"]),
    ),
    max_size=40,
)


def expected_report(rows: list[UsageRow], by: UsageGroup) -> dict[str, dict[str, Any]]:
    def group(r: UsageRow) -> str:
        if by == "day":
            return datetime.fromtimestamp(r.time, UTC).date().isoformat()
        attr = {"model": "model", "workflow": "workflow", "key": "key_id", "tenant": "tenant"}[by]
        value: str = getattr(r, attr)
        return value

    fields = (
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_micros",
        "errors",
        "retries",
    )
    out: dict[str, dict[str, Any]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    for r in rows:
        g = out[group(r)]
        g["requests"] += 1
        g["prompt_tokens"] += r.prompt_tokens
        g["completion_tokens"] += r.completion_tokens
        g["cached_tokens"] += r.cached_tokens
        g["cost_micros"] += r.cost_micros
        g["errors"] += r.status != "ok"
        g["retries"] += r.retry_of != ""
    return dict(out)


@settings(max_examples=25, deadline=None)
@given(specs=rows_strategy, since_days=st.sampled_from([None, 0.0, 1.0]), tenant=st.sampled_from([None, "a"]))
def test_usage_report_and_sums_match_the_rows(
    specs: list[dict[str, Any]], since_days: float | None, tenant: str | None
) -> None:
    scratch = Path(tempfile.mkdtemp(dir=SCRATCH))
    store = SqliteStore(scratch)
    try:
        rows = [row(f"r{i}", **spec) for i, spec in enumerate(specs)]
        store.append(rows, [])
        since = 0.0 if since_days is None else T0 + since_days * DAY
        chosen = [r for r in rows if r.time >= since and tenant in (None, r.tenant)]
        for by in USAGE_GROUPS:
            report = store.usage_report(by, tenant, since)
            expected = expected_report(chosen, by)
            assert [g[by] for g in report] == sorted(expected)
            for g in report:
                want = expected[g[by]]
                assert {k: g[k] for k in want} == want
                assert g["retry_rate"] == pytest.approx(want["retries"] / want["requests"])
                latencies = [r.latency_ms for r in chosen if expected_report([r], by).keys() == {g[by]}]
                assert g["mean_latency_ms"] == pytest.approx(sum(latencies) / len(latencies), abs=1e-3)
        sums = {(s.tenant, s.workflow): s for s in store.usage_sums(since)}
        every = [r for r in rows if r.time >= since]
        assert set(sums) == {(r.tenant, r.workflow) for r in every}
        for (t, w), s in sums.items():
            mine = [r for r in every if (r.tenant, r.workflow) == (t, w)]
            assert s.requests == len(mine)
            assert s.tokens == sum(r.total_tokens for r in mine)
            assert s.cost_micros == sum(r.cost_micros for r in mine)
        assert store.usage_rows(tenant, since, limit=10_000) == chosen
    finally:
        store.close()
        shutil.rmtree(scratch, ignore_errors=True)


def test_usage_report_groups_by_utc_day_and_counts_retries(store: SqliteStore) -> None:
    midnight = datetime(2024, 3, 31, tzinfo=UTC).timestamp()
    store.append(
        [
            row("r1", midnight - 1, prompt_tokens=3, idempotency_key="i"),
            row("r2", midnight - 0.5, retry_of="r1", status="aborted"),
            row("r3", midnight, retry_of="r1", completion_tokens=4),
            row("r4", midnight + 1, tenant="other"),
        ],
        [],
    )
    report = store.usage_report("day", "t")
    assert [(g["day"], g["requests"], g["retries"], g["errors"]) for g in report] == [
        ("2024-03-30", 2, 1, 1),
        ("2024-03-31", 1, 1, 0),
    ]
    assert report[0]["retry_rate"] == 0.5 and report[1]["retry_rate"] == 1.0
    assert store.usage_report("model", "nobody") == []


# -- audit ---------------------------------------------------------------------------------------------------


def test_audit_filters_by_tenant_time_and_action_pattern(store: SqliteStore) -> None:
    entries = [
        AuditEntry(T0 + 1, "admin.tenant_put", "root", target="a"),
        AuditEntry(T0 + 2, "admin.key_create", "root", target="b"),
        AuditEntry(T0 + 3, "auth.failure", "a", outcome="invalid"),
        AuditEntry(T0 + 4, "limit.refused", "a", outcome="budget"),
        AuditEntry(T0 + 5, "admin.key_revoke", "root", target="c", detail={"n": 1}),
        AuditEntry(T0 + 6, "auth.failure", "b", outcome="expired"),
    ]
    store.append([], entries)
    assert store.audit_entries() == entries
    assert store.audit_entries(tenant="a") == entries[2:4]
    assert store.audit_entries(since=T0 + 4) == entries[3:]
    assert store.audit_entries(tenant="root", since=T0 + 2) == [entries[1], entries[4]]
    assert store.audit_entries(action="admin.*") == [entries[0], entries[1], entries[4]]
    assert store.audit_entries(action="admin.key_*") == [entries[1], entries[4]]
    assert store.audit_entries(action="*.failure") == [entries[2], entries[5]]
    assert store.audit_entries(action="auth.failure", tenant="b") == [entries[5]]
    assert store.audit_entries(action="limit.refused") == [entries[3]]
    assert store.audit_entries(action="nothing.*") == []
    assert store.audit_entries(limit=2) == entries[-2:]  # the newest, oldest first


def test_audit_patterns_treat_only_star_as_a_wildcard(store: SqliteStore) -> None:
    entries = [
        AuditEntry(T0, "admin.key_create"),
        AuditEntry(T0 + 1, "admin.keyXcreate"),
        AuditEntry(T0 + 2, "admin.key%create"),
        AuditEntry(T0 + 3, "admin.key\\create"),
    ]
    store.append([], entries)
    assert store.audit_entries(action="admin.key_create") == [entries[0]]
    assert store.audit_entries(action="admin.key%create") == [entries[2]]
    assert store.audit_entries(action="admin.key\\create") == [entries[3]]
    assert store.audit_entries(action="admin.key*") == entries


def test_audit_entries_at_the_same_time_keep_their_order(store: SqliteStore) -> None:
    """A coarse clock (or a fast admin script) writes several entries in one tick: oldest first still means
    the order they were written in."""
    entries = [AuditEntry(T0, f"admin.op{i}", "root") for i in range(20)]
    for entry in entries:
        store.append([], [entry])
    assert store.audit_entries() == entries
    assert store.audit_entries(limit=5) == entries[-5:]


def test_inferences_without_an_audit_entry_read_from_the_ledger(store: SqliteStore) -> None:
    store.append(
        [row("r1", T0, prompt_tokens=2), row("r2", T0 + 1, status="aborted")],
        [AuditEntry(T0 + 1, "inference", "t", "k", "m", "aborted", "r2", {"payload": "kept"})],
    )
    entries = store.audit_entries(action="inference")
    assert [(e.request_id, e.outcome) for e in entries] == [("r1", "ok"), ("r2", "aborted")]
    assert entries[0].detail["prompt_tokens"] == 2 and entries[0].target == "m"
    assert entries[1].detail == {"payload": "kept"}
    assert store.audit_entries(tenant="other") == []
