"""Group commit of ledger rows and audit entries.

Requests hand their rows to one writer thread and await a future; the thread takes everything queued,
appends it in one transaction, commits, then resolves every future of the batch. A response is completed
to its client only after its future resolved, so every response a client saw has a durable ledger row,
while the cost of a commit is shared by all the requests that arrived during the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inferd.store.records import AuditEntry, UsageRow
from inferd.store.sqlite import append

log = logging.getLogger("inferd.store")


@dataclass
class _Item:
    usage: Sequence[UsageRow]
    audit: Sequence[AuditEntry]
    done: asyncio.Future[None] | None
    loop: asyncio.AbstractEventLoop | None


_STOP = _Item((), (), None, None)


class LedgerWriter:
    """One thread appending to the database in batches."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], max_batch: int = 1024) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._thread = threading.Thread(target=self._run, name="inferd-ledger", daemon=True)
        self._closed = False
        self.commits = 0
        """Transactions committed (for tests and the group-commit ratio)."""
        self.rows = 0
        self._thread.start()

    def write(self, usage: Sequence[UsageRow], audit: Sequence[AuditEntry] = ()) -> asyncio.Future[None]:
        """Queue rows; the future resolves once they are committed (call on the event loop)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._closed:
            done.set_exception(RuntimeError("the ledger writer is closed"))
            return done
        self._queue.put(_Item(usage, audit, done, loop))
        return done

    def write_nowait(self, usage: Sequence[UsageRow], audit: Sequence[AuditEntry] = ()) -> None:
        """Queue rows nobody waits for (audit of refusals); still committed before `close` returns."""
        if not self._closed:
            self._queue.put(_Item(usage, audit, None, None))

    def close(self) -> None:
        """Commit everything queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = any(item is _STOP for item in batch)
                items = [item for item in batch if item is not _STOP]
                if items:
                    self._commit(conn, items)
                if stop:
                    # Anything queued after the stop marker still gets written.
                    rest = []
                    while True:
                        try:
                            rest.append(self._queue.get_nowait())
                        except queue.Empty:
                            break
                    if rest:
                        self._commit(conn, [i for i in rest if i is not _STOP])
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, items: list[_Item]) -> None:
        usage = [row for item in items for row in item.usage]
        audit = [entry for item in items for entry in item.audit]
        error: BaseException | None = None
        try:
            append(conn, usage, audit)
            self.commits += 1
            self.rows += len(usage)
        except BaseException as exc:  # a full disk, a locked database past its timeout
            log.exception("ledger commit failed (%d rows)", len(usage))
            error = exc
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for item in items:
            if item.done is not None and item.loop is not None:
                by_loop.setdefault(item.loop, []).append(item.done)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, futures, error)


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futures:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(RuntimeError(f"usage ledger write failed: {error}"))
