"""LedgerWriter: group commit from one event loop, flush on close, and faults that fail futures instead of
hanging them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.store.records import AuditEntry, UsageRow
from inferd.store.sqlite import SqliteStore, connect
from inferd.store.writer import LedgerWriter

T0 = 1_711_836_000.0


def row(i: int) -> UsageRow:
    return UsageRow(f"r{i}", T0 + i, "t", "k", "", "m", "1", "openai", i, 1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path)
    yield store
    store.close()


@pytest.fixture
def writer(store: SqliteStore) -> Iterator[LedgerWriter]:
    writer = LedgerWriter(store.append_connection)
    yield writer
    writer.close()


def committed(store: SqliteStore) -> list[str]:
    """Request ids in the ledger, read through a new connection (what another process sees)."""
    conn = connect(store.path)
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM usage ORDER BY id")]
    finally:
        conn.close()


async def test_concurrent_writers_share_commits(store: SqliteStore, writer: LedgerWriter) -> None:
    n = 300

    async def one(i: int) -> None:
        await asyncio.sleep(0)
        await writer.write([row(i)], [AuditEntry(T0 + i, "inference", "t", request_id=f"r{i}")])

    await asyncio.gather(*(one(i) for i in range(n)))
    assert sorted(committed(store)) == sorted(f"r{i}" for i in range(n))
    assert writer.rows == n
    assert 1 <= writer.commits < n
    assert len(store.audit_entries(action="inference", limit=10_000)) == n


async def test_batches_are_bounded_and_all_rows_land(store: SqliteStore) -> None:
    writer = LedgerWriter(store.append_connection, max_batch=16)
    try:
        futures = [writer.write([row(i)]) for i in range(100)]
        await asyncio.gather(*futures)
        assert writer.commits >= 100 // 16 + 1
        assert committed(store) == [f"r{i}" for i in range(100)]
    finally:
        writer.close()


async def test_close_flushes_everything_queued(store: SqliteStore) -> None:
    writer = LedgerWriter(store.append_connection)
    futures = [writer.write([row(i)]) for i in range(10)]
    for i in range(10, 15):
        writer.write_nowait([row(i)], [AuditEntry(T0, "limit.refused", "t")])
    assert committed(store) == []  # nothing ran yet: the flush is scheduled for the next loop iteration
    writer.close()
    assert committed(store) == [f"r{i}" for i in range(15)]
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(store.audit_entries(action="limit.refused")) == 5
    late = writer.write([row(99)])
    with pytest.raises(RuntimeError, match="closed"):
        await late
    writer.write_nowait([row(100)])
    writer.close()  # twice: a no-op
    await asyncio.sleep(0.01)  # the flush scheduled before close finds nothing left to do
    assert len(committed(store)) == 15


def test_write_nowait_without_a_loop_writes_at_once(store: SqliteStore, writer: LedgerWriter) -> None:
    writer.write_nowait([row(1)], [AuditEntry(T0, "admin.x")])
    assert committed(store) == ["r1"]


async def test_a_read_only_database_fails_the_futures(store: SqliteStore) -> None:
    def read_only() -> sqlite3.Connection:
        return sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, isolation_level=None)

    writer = LedgerWriter(read_only)
    try:
        futures = [writer.write([row(i)]) for i in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)
        for result in results:
            assert isinstance(result, RuntimeError) and "usage ledger write failed" in str(result)
        assert writer.commits == 0 and committed(store) == []
    finally:
        writer.close()


async def test_a_missing_table_fails_the_futures_and_later_writes_still_answer(
    store: SqliteStore, writer: LedgerWriter
) -> None:
    await writer.write([row(0)])
    conn = connect(store.path)
    conn.execute("DROP TABLE usage")
    conn.close()
    with pytest.raises(RuntimeError, match="no such table"):
        await asyncio.wait_for(writer.write([row(1)]), 30)
    with pytest.raises(RuntimeError, match="no such table"):
        await asyncio.wait_for(writer.write([row(2)]), 30)
    await asyncio.wait_for(writer.write([], [AuditEntry(T0, "admin.x")]), 30)  # the audit table still works


async def test_a_locked_database_is_retried_not_failed(store: SqliteStore, writer: LedgerWriter) -> None:
    other = connect(store.path)  # another process (the CLI) holds the write lock
    other.execute("BEGIN IMMEDIATE")
    done = writer.write([row(1)])
    for _ in range(5):
        await asyncio.sleep(0.005)
    assert not done.done()
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(done, 30)
    assert committed(store) == ["r1"]


async def test_a_cancelled_waiter_does_not_lose_the_row(store: SqliteStore, writer: LedgerWriter) -> None:
    task = asyncio.ensure_future(writer.write([row(1)]))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0.01)
    assert committed(store) == ["r1"]
