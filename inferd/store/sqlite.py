"""The governance store on SQLite (WAL): configuration records, the ledger's queries and its journal.

One connection guarded by a lock serves configuration reads and writes and queries (admin operations, the
CLI). The request path never touches SQLite: a server appends ledger rows and audit entries to the journal
(`journal.py`, one `write` per request), and an importer process moves them into SQLite (`importer.py`).
Every ledger or audit query imports first, from any process (the CLI in direct mode too, while a server
runs), so it sees every row whose response was already answered.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from inferd.qos import TIERS, Tier
from inferd.store.importer import LedgerImporter, import_journal
from inferd.store.journal import JOURNAL_DIR, LedgerJournal, segment_path, segments
from inferd.store.ledger_rows import AUDIT_COLUMNS, USAGE_COLUMNS, append_rows
from inferd.store.migrations import migrate
from inferd.store.records import (
    ApiKey,
    AuditEntry,
    Budget,
    Limits,
    Price,
    Role,
    Tenant,
    UsageRow,
)

DB_NAME = "inferd.db"
UsageGroup = Literal["model", "workflow", "day", "key", "tenant"]
USAGE_GROUPS: tuple[UsageGroup, ...] = ("model", "workflow", "day", "key", "tenant")
_GROUP_SQL: dict[UsageGroup, str] = {
    "model": "model",
    "workflow": "workflow",
    "day": "date(time, 'unixepoch')",
    "key": "key_id",
    "tenant": "tenant",
}


@dataclass(frozen=True)
class UsageSums:
    """Settled usage of one tenant and workflow since some time."""

    tenant: str
    workflow: str
    tokens: int
    cost_micros: int
    requests: int


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the pragmas every inferd connection uses."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def _limits(row: sqlite3.Row) -> Limits:
    return Limits(row["rpm"], row["tpm"], row["max_concurrent"], row["max_tokens"])


def _tier(text: str | None) -> Tier | None:
    for tier in TIERS:
        if text == tier:
            return tier
    return None


def _roles(text: str) -> frozenset[Role]:
    roles: set[Role] = set()
    for r in text.split(","):
        if r == "admin":
            roles.add("admin")
        elif r == "user":
            roles.add("user")
    return frozenset(roles)


class SqliteStore:
    """Governance state in `<state_dir>/inferd.db`."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self._conn = connect(self.path)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self.journal_dir = state_dir / JOURNAL_DIR
        self._journal: LedgerJournal | None = None
        self._importer: LedgerImporter | None = None
        try:
            self.schema_version = migrate(self._conn)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        """Stop importing (after importing everything written) and close the journal and the database."""
        try:
            if self._importer is not None:
                self._importer.stop()
        finally:
            if self._journal is not None:
                self._journal.close()
            with self._lock:
                self._conn.close()

    def open_journal(self) -> LedgerJournal:
        """Open the ledger journal for appending (one process per state dir: `JournalLocked` otherwise),
        import what a previous process left in it, and keep importing in a background thread."""
        if self._journal is None:
            journal = LedgerJournal(self.journal_dir)
            importer = LedgerImporter(connect, self.journal_dir, self.path, lambda: journal.written)
            try:
                importer.import_now()
            except BaseException:
                importer.stop()
                journal.close()
                raise
            importer.start()
            self._journal, self._importer = journal, importer
            with self._lock:
                (imported,) = self._conn.execute("SELECT segment FROM ledger_import").fetchone()
            for segment in segments(self.journal_dir):
                if segment < imported:  # imported, but a crash came before it was deleted
                    segment_path(self.journal_dir, segment).unlink(missing_ok=True)
        return self._journal

    def import_ledger(self) -> None:
        """Bring the ledger tables up to date with the journal (see the module's docstring)."""
        if self._importer is not None:
            self._importer.import_now()
        elif self.journal_dir.is_dir():
            with self._lock:
                import_journal(self._conn, self.journal_dir, None)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._conn.execute(sql, params).fetchall())

    def maintain(self) -> None:
        """Periodic upkeep (call off the loop): restart the ledger importer if it died, and move committed
        WAL pages into the database file without blocking writers."""
        if self._importer is not None:
            self._importer.check()
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def config_version(self) -> int:
        """Bumped by every change to tenants, keys, budgets or prices, from any process."""
        with self._lock:
            return int(self._conn.execute("SELECT version FROM config_version").fetchone()[0])

    # -- tenants -------------------------------------------------------------------------------------

    def put_tenant(self, tenant: Tenant, audit: AuditEntry | None = None) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO tenants (name, rpm, tpm, max_concurrent, max_tokens, payload_logging, "
                "disabled, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "rpm=excluded.rpm, tpm=excluded.tpm, max_concurrent=excluded.max_concurrent, "
                "max_tokens=excluded.max_tokens, payload_logging=excluded.payload_logging, "
                "disabled=excluded.disabled",
                (
                    tenant.name, tenant.limits.rpm, tenant.limits.tpm, tenant.limits.max_concurrent,
                    tenant.limits.max_tokens, tenant.payload_logging, int(tenant.disabled), tenant.created,
                ),
            )  # fmt: skip
            _audit(c, audit)

    def delete_tenant(self, name: str, audit: AuditEntry | None = None) -> bool:
        with self._tx() as c:
            deleted = c.execute("DELETE FROM tenants WHERE name = ?", (name,)).rowcount > 0
            if deleted:  # a refused delete is not an admin action that happened
                _audit(c, audit)
        return deleted

    def tenants(self) -> list[Tenant]:
        return [
            Tenant(r["name"], _limits(r), r["payload_logging"], bool(r["disabled"]), r["created"])
            for r in self._query("SELECT * FROM tenants ORDER BY name")
        ]

    # -- keys ----------------------------------------------------------------------------------------

    def put_key(self, key: ApiKey, audit: AuditEntry | None = None) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO api_keys (key_id, tenant, key_hash, roles, models, rpm, tpm, "
                "max_concurrent, max_tokens, expires_at, disabled, name, created, priority) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.key_id, key.tenant, key.key_hash, ",".join(sorted(key.roles)),
                    orjson.dumps(list(key.models)).decode(), key.limits.rpm, key.limits.tpm,
                    key.limits.max_concurrent, key.limits.max_tokens, key.expires_at, int(key.disabled),
                    key.name, key.created, key.priority,
                ),
            )  # fmt: skip
            _audit(c, audit)

    def delete_key(self, key_id: str, audit: AuditEntry | None = None) -> bool:
        with self._tx() as c:
            deleted = c.execute("DELETE FROM api_keys WHERE key_id = ?", (key_id,)).rowcount > 0
            if deleted:  # a refused delete is not an admin action that happened
                _audit(c, audit)
        return deleted

    def api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        sql: str = "SELECT * FROM api_keys"
        params: tuple[str, ...] = ()
        if tenant is not None:
            sql, params = sql + " WHERE tenant = ?", (tenant,)
        return [
            ApiKey(
                r["key_id"], r["tenant"], r["key_hash"], _roles(r["roles"]),
                tuple(orjson.loads(r["models"])), _limits(r), r["expires_at"], bool(r["disabled"]),
                r["name"], r["created"], _tier(r["priority"]),
            )
            for r in self._query(sql + " ORDER BY created, key_id", params)
        ]  # fmt: skip

    # -- budgets and prices --------------------------------------------------------------------------

    def put_budget(self, budget: Budget, audit: AuditEntry | None = None) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO budgets (tenant, scope, period, max_tokens, max_cost_micros, "
                "max_requests) VALUES (?, ?, ?, ?, ?, ?)",
                (budget.tenant, budget.scope, budget.period, budget.max_tokens, budget.max_cost_micros,
                 budget.max_requests),
            )  # fmt: skip
            _audit(c, audit)

    def delete_budget(self, tenant: str, scope: str, period: str, audit: AuditEntry | None = None) -> bool:
        with self._tx() as c:
            deleted = (
                c.execute(
                    "DELETE FROM budgets WHERE tenant = ? AND scope = ? AND period = ?",
                    (tenant, scope, period),
                ).rowcount
                > 0
            )
            if deleted:  # a refused delete is not an admin action that happened
                _audit(c, audit)
        return deleted

    def budgets(self, tenant: str | None = None) -> list[Budget]:
        sql: str = "SELECT * FROM budgets"
        params: tuple[str, ...] = ()
        if tenant is not None:
            sql, params = sql + " WHERE tenant = ?", (tenant,)
        return [
            Budget(r["tenant"], r["scope"], r["period"], r["max_tokens"], r["max_cost_micros"],
                   r["max_requests"])
            for r in self._query(sql + " ORDER BY tenant, scope, period", params)
        ]  # fmt: skip

    def put_price(self, price: Price, audit: AuditEntry | None = None) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO prices (model, prompt_per_1k_micros, completion_per_1k_micros, "
                "per_inference_micros) VALUES (?, ?, ?, ?)",
                (price.model, price.prompt_per_1k_micros, price.completion_per_1k_micros,
                 price.per_inference_micros),
            )  # fmt: skip
            _audit(c, audit)

    def delete_price(self, model: str, audit: AuditEntry | None = None) -> bool:
        with self._tx() as c:
            deleted = c.execute("DELETE FROM prices WHERE model = ?", (model,)).rowcount > 0
            if deleted:  # a refused delete is not an admin action that happened
                _audit(c, audit)
        return deleted

    def prices(self) -> list[Price]:
        return [
            Price(r["model"], r["prompt_per_1k_micros"], r["completion_per_1k_micros"],
                  r["per_inference_micros"])
            for r in self._query("SELECT * FROM prices ORDER BY model")
        ]  # fmt: skip

    # -- ledger and audit ----------------------------------------------------------------------------

    def append(self, usage: Sequence[UsageRow], audit: Sequence[AuditEntry]) -> None:
        """Append straight to the tables, in one transaction (tools and tests; servers use the journal)."""
        with self._tx() as c:
            append_rows(c, usage, audit)

    def usage_sums(self, since: float) -> list[UsageSums]:
        """Settled usage per tenant and workflow from `since` (unix time) on: rebuilds budgets at start."""
        self.import_ledger()
        return [
            UsageSums(r[0], r[1], int(r[2]), int(r[3]), int(r[4]))
            for r in self._query(
                "SELECT tenant, workflow, SUM(prompt_tokens + completion_tokens), SUM(cost_micros), "
                "COUNT(*) FROM usage WHERE time >= ? GROUP BY tenant, workflow",
                (since,),
            )
        ]

    def usage_rows(self, tenant: str | None = None, since: float = 0.0, limit: int = 1000) -> list[UsageRow]:
        self.import_ledger()
        where, params = _where(tenant, since)
        rows = self._query(f"SELECT {USAGE_COLUMNS} FROM usage {where} ORDER BY id LIMIT ?", (*params, limit))
        return [UsageRow(*tuple(r)) for r in rows]

    def usage_report(
        self, by: UsageGroup, tenant: str | None = None, since: float = 0.0
    ) -> list[dict[str, Any]]:
        """Usage summed per group (model, workflow, day, key or tenant)."""
        self.import_ledger()
        where, params = _where(tenant, since)
        group = _GROUP_SQL[by]
        rows = self._query(
            f"SELECT {group} AS grp, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), "
            "SUM(cached_tokens), SUM(cost_micros), SUM(status != 'ok'), "
            "SUM(retry_of != ''), AVG(latency_ms) "
            f"FROM usage {where} GROUP BY grp ORDER BY grp",
            params,
        )
        return [
            {
                by: r[0],
                "requests": int(r[1]),
                "prompt_tokens": int(r[2]),
                "completion_tokens": int(r[3]),
                "cached_tokens": int(r[4]),
                "cost_micros": int(r[5]),
                "errors": int(r[6]),
                "retries": int(r[7]),
                "retry_rate": int(r[7]) / int(r[1]),
                "mean_latency_ms": round(float(r[8]), 3),
            }
            for r in rows
        ]

    def audit_entries(
        self,
        tenant: str | None = None,
        since: float = 0.0,
        action: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEntry]:
        """Audit entries, oldest first (the newest `limit`). Every inference is in the log: its ledger row
        reads as an `inference` entry unless the tenant's payload logging wrote one with the payload."""
        self.import_ledger()
        where, params = _where(tenant, since)
        ledger = (
            "SELECT time, 'inference' AS action, tenant, key_id, model AS target, status AS outcome, "
            "request_id, json_object('model', model, 'version', version, 'workflow', workflow, "
            "'status', status, 'prompt_tokens', prompt_tokens, 'completion_tokens', completion_tokens, "
            "'latency_ms', latency_ms) AS detail, id FROM usage u "
            f"{where} AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.request_id = u.request_id "
            "AND a.action = 'inference' AND u.request_id != '')"
        )
        union = f"SELECT {AUDIT_COLUMNS}, id FROM audit {where} UNION ALL {ledger}"
        sql = f"SELECT {AUDIT_COLUMNS} FROM ({union})"
        args: tuple[Any, ...] = (*params, *params)
        if action:  # only `*` is a wildcard: `_` and `%` in a pattern match themselves
            sql += " WHERE action LIKE ? ESCAPE '\\'"
            literal = action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args = (*args, literal.replace("*", "%"))
        # id breaks ties of time: entries written in one clock tick stay in the order they were written
        rows = self._query(sql + " ORDER BY time DESC, id DESC LIMIT ?", (*args, limit))
        return [
            AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], orjson.loads(r[7])) for r in reversed(rows)
        ]


def _where(tenant: str | None, since: float) -> tuple[str, tuple[Any, ...]]:
    if tenant is None:
        return "WHERE time >= ?", (since,)
    return "WHERE tenant = ? AND time >= ?", (tenant, since)


def _audit(conn: sqlite3.Connection, entry: AuditEntry | None) -> None:
    if entry is not None:
        append_rows(conn, (), (entry,))
