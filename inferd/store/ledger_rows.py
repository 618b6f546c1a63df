"""The ledger's two append-only tables on SQLite: their columns and how rows are inserted."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from inferd.store.records import AuditEntry

USAGE_COLUMNS = (
    "request_id, time, tenant, key_id, workflow, model, version, protocol, prompt_tokens, "
    "completion_tokens, cached_tokens, cost_micros, status, latency_ms, idempotency_key, retry_of"
)
AUDIT_COLUMNS = "time, action, tenant, key_id, target, outcome, request_id, detail"
AUDIT_FIELDS = len(AUDIT_COLUMNS.split(", "))
"""Fields of an audit entry, in `AuditEntry`'s order (its detail last)."""
INSERT_AUDIT = f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({', '.join('?' * AUDIT_FIELDS)})"
ROWS_PER_INSERT = 256
"""Ledger rows per INSERT statement (16 parameters each, far below SQLite's 32766)."""


def audit_params(entry: AuditEntry) -> tuple[Any, ...]:
    return (
        entry.time, entry.action, entry.tenant, entry.key_id, entry.target, entry.outcome,
        entry.request_id, orjson.dumps(entry.detail, option=orjson.OPT_NON_STR_KEYS).decode(),
    )  # fmt: skip


def insert_usage(conn: sqlite3.Connection, usage: Sequence[Sequence[Any]]) -> None:
    """Multi-row INSERTs: one statement step (one release and re-acquisition of the GIL) per chunk instead
    of one per row: a thread that must win the GIL back from a busy event loop waits up to the switch
    interval each time."""
    one = f"({', '.join('?' * 16)})"
    for i in range(0, len(usage), ROWS_PER_INSERT):
        chunk = usage[i : i + ROWS_PER_INSERT]
        sql = f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES " + ", ".join([one] * len(chunk))
        conn.execute(sql, [value for row in chunk for value in row])  # each row's fields in column order


def append_rows(
    conn: sqlite3.Connection, usage: Sequence[Sequence[Any]], audit: Sequence[AuditEntry]
) -> None:
    """Insert ledger rows and audit entries inside the caller's transaction."""
    if usage:
        insert_usage(conn, usage)
    if audit:
        conn.executemany(INSERT_AUDIT, [audit_params(e) for e in audit])
