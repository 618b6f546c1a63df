"""Versioned schema of the governance database. Each migration runs once, in order, in one transaction;
`PRAGMA user_version` records how many have run. Append new migrations; never edit a released one.

Every change to the configuration tables bumps `config_version`, which servers poll to pick up changes made
by another process (the CLI writing to the state dir directly).
"""

from __future__ import annotations

import sqlite3

_CONFIG_TABLES = ("tenants", "api_keys", "budgets", "prices")
_BUMPS = "".join(
    f"""
    CREATE TRIGGER {table}_{event.lower()}_bump AFTER {event} ON {table}
        BEGIN UPDATE config_version SET version = version + 1; END;"""
    for table in _CONFIG_TABLES
    for event in ("INSERT", "UPDATE", "DELETE")
)

MIGRATIONS: tuple[str, ...] = (
    # 1: tenants, keys, budgets, prices, the usage ledger and the audit log.
    """
    CREATE TABLE tenants (
        name TEXT PRIMARY KEY,
        rpm INTEGER, tpm INTEGER, max_concurrent INTEGER, max_tokens INTEGER,
        payload_logging TEXT NOT NULL DEFAULT 'none',
        disabled INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL
    );
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        key_hash TEXT NOT NULL,
        roles TEXT NOT NULL,
        models TEXT NOT NULL,
        rpm INTEGER, tpm INTEGER, max_concurrent INTEGER, max_tokens INTEGER,
        expires_at REAL,
        disabled INTEGER NOT NULL DEFAULT 0,
        name TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant);
    CREATE TABLE budgets (
        tenant TEXT NOT NULL REFERENCES tenants(name) ON DELETE CASCADE,
        scope TEXT NOT NULL,
        period TEXT NOT NULL,
        max_tokens INTEGER, max_cost_micros INTEGER, max_requests INTEGER,
        PRIMARY KEY (tenant, scope, period)
    );
    CREATE TABLE prices (
        model TEXT PRIMARY KEY,
        prompt_per_1k_micros INTEGER NOT NULL,
        completion_per_1k_micros INTEGER NOT NULL,
        per_inference_micros INTEGER NOT NULL
    );
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL,
        time REAL NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        workflow TEXT NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        protocol TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_micros INTEGER NOT NULL,
        status TEXT NOT NULL,
        latency_ms REAL NOT NULL,
        idempotency_key TEXT NOT NULL,
        retry_of TEXT NOT NULL
    );
    -- One index, on time (appended in order: cheap). A (tenant, time) or request-id index would double or
    -- triple the cost of every ledger insert on the request path (measured); queries scan a time range.
    CREATE INDEX usage_time ON usage(time);
    CREATE TRIGGER usage_no_update BEFORE UPDATE ON usage
        BEGIN SELECT RAISE(ABORT, 'the usage ledger is append-only'); END;
    CREATE TRIGGER usage_no_delete BEFORE DELETE ON usage
        BEGIN SELECT RAISE(ABORT, 'the usage ledger is append-only'); END;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        action TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        request_id TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_tenant_time ON audit(tenant, time);
    CREATE INDEX audit_time ON audit(time);
    CREATE INDEX audit_request ON audit(request_id);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE config_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
    INSERT INTO config_version VALUES (1, 0);
    """
    + _BUMPS,
    # 2: a key's default priority tier (`interactive` or `batch`; NULL = interactive).
    """
    ALTER TABLE api_keys ADD COLUMN priority TEXT;
    """,
    # 3: how far the ledger journal (`journal.py`) has been imported: a segment and a byte offset in it.
    """
    CREATE TABLE ledger_import (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        segment INTEGER NOT NULL,
        offset INTEGER NOT NULL
    );
    INSERT INTO ledger_import VALUES (1, 0, 0);
    """,
)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to the latest schema; returns the schema version."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current > len(MIGRATIONS):
        raise RuntimeError(f"database schema version {current} is newer than this inferd ({len(MIGRATIONS)})")
    for version in range(current, len(MIGRATIONS)):
        script = MIGRATIONS[version]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    """Split a script into statements, keeping trigger bodies (which contain `;`) whole."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
