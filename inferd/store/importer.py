"""Moves the ledger journal's lines into SQLite, exactly once.

Where the import stands is a row of the database (`ledger_import`: segment and byte offset), updated in the
same transaction as the rows it imports, so a crash at any point neither loses nor doubles a row, and
processes importing the same journal (a server, and the CLI in direct mode) serialize on SQLite's write
lock. Only complete lines are imported: a writer's line ends with its newline, written last, and the
kernel never shows a reader bytes past what a writer has copied in, so a line still being written is never
taken. The importer in the writing process stops at the position the writer reports (`written`).

The server imports in a child process every `interval_s` and whenever a reader asks (`import_now`: the
admin API and the CLI read the ledger after importing, so they see every response already answered).
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from inferd.store.journal import (
    AUDIT_TAG,
    USAGE_TAG,
    Position,
    decode,
    read_complete,
    record_tag,
    segment_path,
)
from inferd.store.ledger_rows import append_rows
from inferd.store.records import AuditEntry, UsageRow

log = logging.getLogger("inferd.store")

IMPORT_BYTES = 4 * 1024 * 1024
"""Journal bytes per import transaction."""
IMPORT_INTERVAL_S = 0.05
STOP_TIMEOUT_S = 10.0
"""How long `stop` waits for the importer process to finish its current transaction."""


def import_journal(conn: sqlite3.Connection, directory: Path, written: Position | None) -> int:
    """Import every complete line not yet imported (up to `written` when a writer is live, None when none
    is); returns the number of lines imported."""
    total = 0
    while (n := _import_once(conn, directory, written)) is not None:
        total += n
    return total


def _import_once(conn: sqlite3.Connection, directory: Path, written: Position | None) -> int | None:
    """One transaction: the next chunk of lines (their count), a move to the next segment (0), or None
    when there is nothing to do."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        segment, offset = conn.execute("SELECT segment, offset FROM ledger_import").fetchone()
        path = segment_path(directory, segment)
        live = written is not None and written[0] == segment
        data = read_complete(path, offset, written[1] if live and written else None, IMPORT_BYTES)
        if data:
            _append_lines(conn, path, data)
            conn.execute("UPDATE ledger_import SET offset = ?", (offset + len(data),))
            conn.execute("COMMIT")
            return data.count(b"\n")
        if written is not None:
            finished = written[0] > segment  # the writer has moved on: this segment is whole
        else:
            finished = segment_path(directory, segment + 1).exists()
        if not finished:
            conn.execute("ROLLBACK")
            return None
        conn.execute("UPDATE ledger_import SET segment = ?, offset = 0", (segment + 1,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    path.unlink(missing_ok=True)  # every line of it is in the database
    return 0


def _append_lines(conn: sqlite3.Connection, path: Path, data: bytes) -> None:
    """Insert complete journal lines inside the caller's transaction: parsed as one JSON array, inserted in
    multi-row statements (about 3 µs a row, against 7.5 for SQLite's own JSON functions, which parse each
    line again for every column). When a line is damaged, the lines are decoded one by one and the damaged
    ones skipped, with an error logged."""
    parsed = _parse(data)
    if parsed is None:
        usage: list[Sequence[Any]] = []
        audit: list[AuditEntry] = []
        for line in data.splitlines():
            try:
                record = decode(line)
            except ValueError as exc:
                log.error("ledger journal %s: skipped a line that is not a record (%s)", path, exc)
                continue
            if isinstance(record, UsageRow):
                usage.append(record)
            else:
                audit.append(record)
        parsed = usage, audit
    append_rows(conn, *parsed)


def _parse(data: bytes) -> tuple[list[Sequence[Any]], list[AuditEntry]] | None:
    """Usage rows (their fields in column order) and audit entries of `data`'s lines, or None when any
    line is not a record."""
    try:
        values = orjson.loads(b"[" + data[:-1].replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        return None
    usage: list[Sequence[Any]] = []
    audit: list[AuditEntry] = []
    for value in values:
        tag = record_tag(value)
        if tag == USAGE_TAG:
            usage.append(value[1:])
        elif tag == AUDIT_TAG:
            audit.append(AuditEntry(*value[1:]))
        else:
            return None
    return usage, audit


class LedgerImporter:
    """Imports a live journal: in a child process every `interval_s` (`import_worker.py`), and on demand in
    this one (`import_now`).

    Not a thread: a thread of the server waiting for the GIL is woken by every release of it on the event
    loop (each ledger write, each socket send), which cost the loop about 13 µs per request (measured in
    session 6). The child shares no GIL; it imports up to the position the writer publishes, exits when its
    stdin closes (this process stopping or dying), and is restarted by `check` if it died."""

    def __init__(
        self,
        connect: Callable[[Path], sqlite3.Connection],
        directory: Path,
        database: Path,
        written: Callable[[], Position],
        interval_s: float = IMPORT_INTERVAL_S,
    ) -> None:
        self._conn = connect(database)
        self.directory = directory
        self.database = database
        self._written = written
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._child: subprocess.Popen[bytes] | None = None

    def import_now(self) -> int:
        """Import what the writer has written so far; returns the lines imported."""
        with self._lock:
            return import_journal(self._conn, self.directory, self._written())

    def start(self) -> None:
        """Start the child; if it cannot start (no processes left, no interpreter), log it and go on: the
        journal is still imported at every start, before every ledger query and at close, and `check`
        tries again."""
        self._started = True
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", "inferd.store.import_worker", str(self.database.resolve()),
                 str(self.directory.resolve()), str(self.interval_s)],
                stdin=subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            self._child = None
            log.error("could not start the ledger importer process (%s): importing on demand only", exc)

    def check(self) -> None:
        """Restart the child if it died (it logs why on the server's stderr) or never started."""
        if not self._started or self._stopped:
            return
        child = self._child
        if child is not None:
            if child.poll() is None:
                return
            log.warning("the ledger importer process exited with code %s: restarting it", child.returncode)
            self._close_child(child)
        self.start()

    def _close_child(self, child: subprocess.Popen[bytes]) -> None:
        if child.stdin is not None:
            child.stdin.close()  # its signal to stop
        try:
            child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def stop(self) -> None:
        """Stop the child, import what is left, close the connection (once)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._child is not None:
                self._close_child(self._child)
            self.import_now()
        finally:
            self._conn.close()
