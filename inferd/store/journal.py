"""The ledger journal: usage rows and audit entries made durable on the request path by one `write`.

A request's ledger row must be durable before its response leaves (issue 4). A SQLite commit per request
costs tens of microseconds of the event loop, and a group commit makes every response wait for the next
loop iteration or two; appending one JSON line to a file costs under a microsecond and needs no wait. Once
`os.write` returns, the line is in the kernel's page cache: a killed process (SIGKILL) loses nothing, the
same guarantee as SQLite's WAL with `synchronous=NORMAL`. The store imports the journal into SQLite in the
background (`importer.py`) and at every start before anything reads the ledger.

Layout: `<state_dir>/ledger/<segment>.jsonl`, numbered segments of at most `segment_bytes` each; a line is
`["u", <UsageRow fields>]` or `["a", <AuditEntry fields>]`. One process writes a state dir's journal: the
writer holds an exclusive lock (`flock`) on `<state_dir>/ledger/lock` for as long as it is open, so a second
server on the same state dir fails at start with a clear error, and the kernel frees the lock when the
process dies. After each append the writer publishes how far its complete lines go in `<state_dir>/ledger/
written`, a word of shared memory (a mapped file) that the importer process reads (`import_worker.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from inferd.errors import JournalLocked
from inferd.store.ledger_rows import AUDIT_FIELDS
from inferd.store.records import AuditEntry, UsageFields, UsageRow

log = logging.getLogger("inferd.store")

JOURNAL_DIR: Final = "ledger"
LOCK_NAME: Final = "lock"
POSITION_NAME: Final = "written"
SEGMENT_BYTES: Final = 64 * 1024 * 1024
"""Size past which the writer starts a new segment (imported segments are deleted)."""
USAGE_TAG: Final = "u"
AUDIT_TAG: Final = "a"
_SCAN_CHUNK: Final = 1 << 16


Position = tuple[int, int]
"""(segment, byte offset) in the journal."""
_OFFSET_BITS: Final = 40


class PublishedPosition:
    """The writer's position as one aligned 8-byte word of a shared mapping (segment above bit 40): a
    single store to publish and a single load to read, so a reader never sees half of an update."""

    def __init__(self, directory: Path, writable: bool) -> None:
        path = directory / POSITION_NAME
        fd = os.open(path, (os.O_RDWR | os.O_CREAT) if writable else os.O_RDONLY, 0o600)
        try:
            if writable and os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._word = memoryview(self._map).cast("Q")

    def publish(self, position: Position) -> None:
        segment, offset = position
        self._word[0] = (segment << _OFFSET_BITS) | offset

    def read(self) -> Position:
        word = self._word[0]
        return word >> _OFFSET_BITS, word & ((1 << _OFFSET_BITS) - 1)

    def close(self) -> None:
        self._word.release()
        self._map.close()


def segment_path(directory: Path, segment: int) -> Path:
    return directory / f"{segment:010d}.jsonl"


def segments(directory: Path) -> list[int]:
    """The segment numbers present, ascending."""
    found = []
    for path in directory.glob("*.jsonl"):
        if path.stem.isdigit():
            found.append(int(path.stem))
    return sorted(found)


def encode(usage: Sequence[UsageFields], audit: Sequence[AuditEntry]) -> bytes:
    """The journal lines of `usage` and `audit`, each ending with a newline."""
    lines = [_usage_line(row) for row in usage]
    for e in audit:
        fields = (e.time, e.action, e.tenant, e.key_id, e.target, e.outcome, e.request_id, e.detail)
        lines.append(
            orjson.dumps((AUDIT_TAG, *fields), option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE)
        )
    return b"".join(lines)


_dumps: Final = orjson.dumps
_APPEND_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE
"""Held here, not looked up on the module per row (compiled: two attribute lookups, ~10% of a row)."""


def _usage_line(row: UsageFields) -> bytes:
    # A tuple concatenation, not `(USAGE_TAG, *row)`: compiled, the unpacking goes through a list (1.5x).
    return _dumps((USAGE_TAG,) + row, option=_APPEND_NEWLINE)  # noqa: RUF005


def record_tag(value: Any) -> str | None:
    """USAGE_TAG or AUDIT_TAG when `value` (a parsed journal line) is a well-formed record of that kind,
    else None."""
    if not isinstance(value, list) or not value:
        return None
    tag = value[0]
    if tag == USAGE_TAG and len(value) == 1 + len(UsageRow._fields):
        return USAGE_TAG
    if tag == AUDIT_TAG and len(value) == 1 + AUDIT_FIELDS and isinstance(value[-1], dict):
        return AUDIT_TAG
    return None


def decode(line: bytes) -> UsageRow | AuditEntry:
    """One journal line back into its record; ValueError when the line is not one."""
    value: Any = orjson.loads(line)
    tag = record_tag(value)
    if tag == USAGE_TAG:
        return UsageRow(*value[1:])
    if tag == AUDIT_TAG:
        return AuditEntry(*value[1:])
    if not isinstance(value, list) or not value:
        raise ValueError("not a journal record")
    raise ValueError(f"not a journal record: tag {value[0]!r} with {len(value) - 1} fields")


def complete_length(fd: int, size: int) -> int:
    """The length of the file's complete lines: up to and including its last newline."""
    end = size
    while end > 0:
        start = max(0, end - _SCAN_CHUNK)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def read_complete(path: Path, start: int, end: int | None, max_bytes: int) -> bytes:
    """The complete lines of `path` from byte `start`, up to `end` (None: the file's end), about
    `max_bytes` of them (always at least one whole line when there is one); empty when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    try:
        stop = os.fstat(fd).st_size if end is None else end
        data = b""
        want = max_bytes
        while start < stop:
            data = os.pread(fd, min(want, stop - start), start)
            if b"\n" in data or start + len(data) >= stop:
                break
            want *= 2  # a line longer than max_bytes (a large payload): read more
    finally:
        os.close(fd)
    return data[: data.rfind(b"\n") + 1]


class LedgerJournal:
    """The append side: one process, the event loop's thread."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise JournalLocked(
                f"the usage ledger in {directory} is in use by another inferd process (one server per "
                "state dir)"
            ) from None
        present = segments(directory)
        segment = present[-1] if present else 0
        self._fd = self._open(segment)
        size = os.fstat(self._fd).st_size
        offset = complete_length(self._fd, size)
        if offset != size:
            # A line cut short by a crash: its request never got a response (the write had not returned).
            path = segment_path(directory, segment)
            log.warning("ledger journal %s: dropped an incomplete last line", path)
            os.ftruncate(self._fd, offset)
        self._written = (segment, offset)
        self._published = PublishedPosition(directory, writable=True)
        self._published.publish(self._written)
        self.closed = False

    def _open(self, segment: int) -> int:
        return os.open(segment_path(self.directory, segment), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)

    @property
    def written(self) -> Position:
        """(segment, bytes): everything before this position is complete lines (what may be imported).
        One tuple, replaced whole, so another thread never reads a segment with another segment's offset."""
        return self._written

    @property
    def segment(self) -> int:
        return self._written[0]

    @property
    def offset(self) -> int:
        return self._written[1]

    def append(self, usage: Sequence[UsageFields], audit: Sequence[AuditEntry] = ()) -> None:
        """Make rows durable (against the process being killed) before returning; OSError when they
        could not be (a full disk): the caller must not report them to the client."""
        self._write(encode(usage, audit))

    def append_usage(self, row: UsageFields) -> None:
        """`append` of one usage row and no audit entry: every request's settlement (without the lists and
        the join of the general form, about 1,000 instructions of the ~20,000 a governed request adds)."""
        self._write(_usage_line(row))

    def _write(self, data: bytes) -> None:
        if self.closed:
            raise OSError("the ledger journal is closed")
        segment, offset = self._written
        try:
            # A regular file takes the whole write unless the disk is full, which raises. (An index, not
            # `view = view[n:]`: compiled by mypyc, that form wrote the data twice.)
            done = os.write(self._fd, data)
            while done < len(data):
                done += os.write(self._fd, memoryview(data)[done:])
        except OSError:
            # Cut off what part of it was written, or the next line would be glued to it and lost too.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, offset)
            raise
        offset += len(data)
        if offset >= self.segment_bytes:
            fd = self._open(segment + 1)
            os.close(self._fd)
            self._fd = fd
            segment, offset = segment + 1, 0
        self._written = (segment, offset)
        self._published.publish(self._written)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._published.close()
        os.close(self._fd)
        os.close(self._lock_fd)  # releases the flock
