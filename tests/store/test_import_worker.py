"""The ledger importer process: it imports up to the writer's published position, stops with its server
(also when the server is killed), and is restarted if it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from inferd.store.journal import PublishedPosition, segment_path
from inferd.store.records import UsageRow
from inferd.store.sqlite import SqliteStore
from tests.store.test_journal import committed


def row(i: int) -> UsageRow:
    return UsageRow(f"r{i}", float(i), "t", "k", "", "m", "1", "http")


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_importer_is_a_process_not_a_thread_and_stops_with_the_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    journal = store.open_journal()
    child = store._importer._child if store._importer else None
    assert child is not None and child.poll() is None
    assert not [t for t in threading.enumerate() if "import" in t.name]
    journal.append([row(1)])
    assert eventually(lambda: committed(store) == ["r1"])
    journal.append([row(2)])
    store.close()  # stops the process, then imports what is left itself
    assert child.poll() == 0
    assert committed(SqliteStore(tmp_path)) == ["r1", "r2"]


def test_nothing_past_the_published_position_is_imported(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    journal = store.open_journal()
    try:
        journal.append([row(1)])
        assert eventually(lambda: committed(store) == ["r1"])
        # A complete line the writer has not published: as between a write that failed half-way and the
        # writer cutting it off again.
        path = segment_path(store.journal_dir, journal.segment)
        with open(path, "ab") as f:
            f.write(b'["u","ghost",0.0,"t","k","","m","1","http",0,0,0,0,"ok",0.0,"",""]\n')
        time.sleep(0.5)  # ten import intervals
        assert committed(store) == ["r1"]
        assert PublishedPosition(store.journal_dir, writable=False).read() == journal.written
        os.truncate(path, journal.offset)
        journal.append([row(2)])
        assert eventually(lambda: committed(store) == ["r1", "r2"])
    finally:
        store.close()


def test_a_dead_importer_is_restarted(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    journal = store.open_journal()
    try:
        assert store._importer is not None and store._importer._child is not None
        first = store._importer._child
        first.kill()
        first.wait()
        store.maintain()  # the governance watcher calls it every poll interval
        second = store._importer._child
        assert second is not first and second.poll() is None
        journal.append([row(1)])
        assert eventually(lambda: committed(store) == ["r1"])
    finally:
        store.close()


SERVER = """
import sys, time
from pathlib import Path

import pytest
from inferd.store.sqlite import SqliteStore
store = SqliteStore(Path(sys.argv[1]))
store.open_journal()
print(store._importer._child.pid, flush=True)
time.sleep(60)
"""


def test_the_importer_exits_when_its_server_is_killed(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as server:
        try:
            assert server.stdout is not None
            importer = int(server.stdout.readline())
            assert alive(importer)
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait()
    assert eventually(lambda: not alive(importer))


def test_without_an_importer_process_the_server_still_serves_and_imports_on_demand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    store = SqliteStore(tmp_path)
    journal = store.open_journal()  # logs the failure, does not raise
    try:
        assert store._importer is not None and store._importer._child is None
        journal.append([row(1)])
        store.import_ledger()  # what every ledger query does first
        assert committed(store) == ["r1"]
        monkeypatch.undo()
        store.maintain()  # the watcher's next tick starts it
        assert store._importer._child is not None and store._importer._child.poll() is None
        journal.append([row(2)])
        assert eventually(lambda: committed(store) == ["r1", "r2"])
    finally:
        store.close()
