"""The ledger journal and its import into SQLite: exactly once, across segments, crashes and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferd.errors import JournalLocked
from inferd.store.importer import import_journal
from inferd.store.journal import LedgerJournal, read_complete, segment_path, segments
from inferd.store.records import AuditEntry, UsageRow
from inferd.store.sqlite import SqliteStore, connect

T0 = 1_711_836_000.0


def row(i: int, **changes: object) -> UsageRow:
    base = UsageRow(f"r{i}", T0 + i + 0.123456789, "t", "k", "wf", "m", "1", "openai", i, 2 * i, 1, 7 * i,
                    "ok", 1.5 + i / 7, f"idem-{i}", "")  # fmt: skip
    return base._replace(**changes)


def committed(store: SqliteStore) -> list[str]:
    """Request ids in the usage table, read through a new connection (no import)."""
    conn = connect(store.path)
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM usage ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path)
    yield store
    store.close()


def test_rows_round_trip_exactly_and_import_once(store: SqliteStore) -> None:
    journal = store.open_journal()
    rows = [row(i) for i in range(50)]
    rows[7] = row(7, workflow='ünïcode "quoted"\n\t', status="invalid_input", retry_of="r1")
    entry = AuditEntry(T0, "inference", "t", "k", "m", "ok", "r3", {"payload": {"prompt": "hé"}, "n": 2})
    journal.append(rows[:10])
    journal.append(rows[10:], [entry])
    store.import_ledger()  # SQLite parses the lines itself
    # A NUL character in a string (an OpenAI `user` field can hold one) takes the line-by-line path.
    nul = [row(50, workflow="a\x00b")]
    nul_entry = AuditEntry(T0, "inference", "t", "k", "m", "ok", "r4", {"prompt": "\x00"})
    journal.append(nul, [nul_entry])
    store.import_ledger()
    store.import_ledger()  # nothing left: no row twice
    assert store.usage_rows(limit=1000) == rows + nul
    assert [e for e in store.audit_entries() if e.request_id in ("r3", "r4")] == [entry, nul_entry]
    assert committed(store) == [r.request_id for r in rows + nul]


def test_the_background_importer_catches_up_without_being_asked(store: SqliteStore) -> None:
    store.open_journal().append([row(1)])
    deadline = threading.Event()
    for _ in range(200):
        if committed(store) == ["r1"]:
            break
        deadline.wait(0.01)
    assert committed(store) == ["r1"]


def test_one_writer_per_state_dir(tmp_path: Path) -> None:
    first = LedgerJournal(tmp_path / "ledger")
    with pytest.raises(JournalLocked, match="in use by another inferd process"):
        LedgerJournal(tmp_path / "ledger")
    first.close()
    LedgerJournal(tmp_path / "ledger").close()  # the lock went with the writer


def test_segments_rotate_and_imported_ones_are_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    journal = LedgerJournal(directory, segment_bytes=1000)
    for i in range(40):
        journal.append([row(i)])
    assert len(segments(directory)) > 3
    store = SqliteStore(tmp_path)
    try:
        store.import_ledger()  # as another process would: up to the last complete line of each segment
        assert committed(store) == [f"r{i}" for i in range(40)]
        assert segments(directory) == [journal.segment]  # only the segment still being written is left
        journal.append([row(40)])
        store.import_ledger()
        assert committed(store) == [f"r{i}" for i in range(41)]
    finally:
        journal.close()
        store.close()


def test_an_incomplete_last_line_is_never_imported_and_is_dropped_by_the_next_writer(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    journal = LedgerJournal(directory)
    journal.append([row(1), row(2)])
    journal.close()
    with open(segment_path(directory, 0), "ab") as f:
        f.write(b'["u","r3",17')  # a crash in the middle of a write: no response was sent for it
    store = SqliteStore(tmp_path)
    try:
        store.import_ledger()
        assert committed(store) == ["r1", "r2"]
        journal = LedgerJournal(directory)  # the next server start cuts the torn line off
        journal.append([row(4)])
        journal.close()
        store.import_ledger()
        assert committed(store) == ["r1", "r2", "r4"]
    finally:
        store.close()


def test_a_line_longer_than_a_read_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"a" * 5000 + b"\n" + b"b\n" + b"c")
    assert read_complete(path, 0, None, 100) == b"a" * 5000 + b"\nb\n"  # never the incomplete "c"
    assert read_complete(path, 5001, None, 100) == b"b\n"
    assert read_complete(path, 5003, None, 100) == b""  # no newline yet
    assert read_complete(path, 0, 5001, 100) == b"a" * 5000 + b"\n"  # never past `end`


def test_a_damaged_line_is_skipped_and_the_others_imported(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    journal = LedgerJournal(directory)
    journal.append([row(1)])
    journal.close()
    with open(segment_path(directory, 0), "ab") as f:
        f.write(b'["u","r2",1.0]\n{"not": "a record"}\n\xff\xfe\n')
    journal = LedgerJournal(directory)
    journal.append([row(3)], [AuditEntry(T0, "limit.refused", "t", request_id="r3")])
    journal.close()
    store = SqliteStore(tmp_path)
    try:
        assert [r.request_id for r in store.usage_rows()] == ["r1", "r3"]
        assert [e.request_id for e in store.audit_entries(action="limit.refused")] == ["r3"]
    finally:
        store.close()


def test_concurrent_importers_import_each_line_once(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    journal = LedgerJournal(directory, segment_bytes=5000)
    SqliteStore(tmp_path).close()  # the schema
    stop = threading.Event()
    errors: list[BaseException] = []

    def importer() -> None:
        conn = connect(tmp_path / "inferd.db")
        try:
            while not stop.is_set():
                import_journal(conn, directory, None)
            import_journal(conn, directory, None)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=importer) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(300):
        journal.append([row(i)])
    stop.set()
    for t in threads:
        t.join()
    journal.close()
    assert not errors
    store = SqliteStore(tmp_path)
    try:
        store.import_ledger()
        assert committed(store) == [f"r{i}" for i in range(300)]
    finally:
        store.close()


CRASHER = """
import os, signal, sys
from pathlib import Path
from inferd.store.journal import LedgerJournal
from inferd.store.records import UsageRow
journal = LedgerJournal(Path(sys.argv[1]), segment_bytes=4096)
for i in range(int(sys.argv[2])):
    journal.append([UsageRow(f"r{i}", float(i), "t", "k", "", "m", "1", "http")])
    print(i, flush=True)  # what a client would have been told
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_rows_written_before_sigkill_are_all_imported(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CRASHER, str(tmp_path / "ledger"), "500"], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL
    told = [f"r{line}" for line in done.stdout.split()]
    assert len(told) == 500
    store = SqliteStore(tmp_path)
    try:
        assert [r.request_id for r in store.usage_rows(limit=1000)] == told
    finally:
        store.close()
    store = SqliteStore(tmp_path)
    try:
        store.open_journal()  # the next server: imports nothing twice
        assert committed(store) == told
    finally:
        store.close()


def test_a_failed_write_raises_and_is_not_counted(tmp_path: Path) -> None:
    journal = LedgerJournal(tmp_path / "ledger")
    full = os.open("/dev/full", os.O_WRONLY)
    saved = os.dup(journal._fd)
    os.dup2(full, journal._fd)  # fault injection: the disk is full
    try:
        with pytest.raises(OSError):
            journal.append([row(1)])
        assert journal.offset == 0
    finally:
        os.dup2(saved, journal._fd)
        os.close(saved)
        os.close(full)
    journal.append([row(2)])
    journal.close()
    with pytest.raises(OSError, match="closed"):
        journal.append([row(3)])
    store = SqliteStore(tmp_path)
    try:
        assert [r.request_id for r in store.usage_rows()] == ["r2"]
    finally:
        store.close()


def test_one_row_appended_alone_is_the_same_line(tmp_path: Path) -> None:
    """`append_usage` (each request's settlement) writes what `append` of the one row writes."""
    odd = row(1, workflow='ünïcode "quoted"\n\t')
    general = LedgerJournal(tmp_path / "a")
    general.append([odd])
    general.close()
    alone = LedgerJournal(tmp_path / "b")
    alone.append_usage(odd)
    assert alone.offset == general.offset
    alone.close()
    with pytest.raises(OSError, match="closed"):
        alone.append_usage(row(2))
    assert segment_path(tmp_path / "a", 0).read_bytes() == segment_path(tmp_path / "b", 0).read_bytes()


def test_a_segment_imported_but_left_by_a_crash_is_deleted_at_the_next_start(tmp_path: Path) -> None:
    directory = tmp_path / "ledger"
    journal = LedgerJournal(directory, segment_bytes=300)
    for i in range(5):
        journal.append([row(i)])
    journal.close()
    store = SqliteStore(tmp_path)
    try:
        store.import_ledger()
        leftover = segment_path(directory, 0)
        leftover.write_bytes(b"")  # as if the crash came between the import's commit and the unlink
        assert 0 in segments(directory)
    finally:
        store.close()
    store = SqliteStore(tmp_path)
    try:
        store.open_journal()
        assert 0 not in segments(directory)
        assert committed(store) == [f"r{i}" for i in range(5)]
    finally:
        store.close()


FILLER = """
import resource, signal, sys
from pathlib import Path
from inferd.store.journal import LedgerJournal
from inferd.store.records import UsageRow
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
journal = LedgerJournal(Path(sys.argv[1]))
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # the disk fills up in the middle of a line
told = []
for i in range(100):
    try:
        journal.append([UsageRow(f"r{i}", float(i), "t", "k", "", "m", "1", "http")])
        told.append(i)
    except OSError:
        break
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
journal.append([UsageRow("after", 0.0, "t", "k", "", "m", "1", "http")])
print(" ".join(f"r{i}" for i in told) + " after")
"""


def test_a_write_cut_short_by_a_full_disk_loses_no_reported_row(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FILLER, str(tmp_path / "ledger")], capture_output=True, text=True, check=True
    )
    told = done.stdout.split()
    assert 3 <= len(told) < 20  # some rows fit, then one did not, then there was room again
    store = SqliteStore(tmp_path)
    try:
        assert [r.request_id for r in store.usage_rows()] == told
    finally:
        store.close()
