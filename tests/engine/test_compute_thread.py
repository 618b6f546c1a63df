"""The process's one torch thread: order, results, errors, re-entry, a hung call abandoned, close."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from inferd.engine.compute_thread import ComputeThread, set_openmp_defaults


def test_calls_from_many_threads_run_one_at_a_time_on_one_thread() -> None:
    compute = ComputeThread()
    seen: list[int] = []
    busy = threading.Lock()

    def work(i: int) -> tuple[int, int]:
        assert busy.acquire(blocking=False), "two calls ran at once"
        try:
            seen.append(threading.get_ident())
            return i, i * i
        finally:
            busy.release()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: compute.call(lambda: work(i)), range(200)))
    compute.close()
    assert results == [(i, i * i) for i in range(200)]
    assert len(set(seen)) == 1 and seen[0] != threading.get_ident()


def test_errors_reach_the_caller_and_the_thread_goes_on() -> None:
    compute = ComputeThread()

    def fail() -> None:
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        compute.call(fail)
    assert compute.call(lambda: 7) == 7
    compute.close()


def test_a_call_from_the_compute_thread_runs_inline() -> None:
    compute = ComputeThread()
    assert compute.call(lambda: compute.call(lambda: threading.get_ident())) == compute.call(
        threading.get_ident
    )
    compute.close()


def test_abandoning_a_hung_call_moves_the_queue_to_a_fresh_thread() -> None:
    compute = ComputeThread()
    release, started = threading.Event(), threading.Event()
    owner, other = object(), object()

    def hang() -> str:
        started.set()
        release.wait(30)
        return "late"

    with ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(compute.call, hang, owner=owner)
        assert started.wait(10)
        queued = pool.submit(compute.call, threading.get_ident)
        assert not compute.abandon(other)  # not the owner of the call in progress: nothing changes
        assert not compute.abandon(None)
        assert compute.abandon(owner)
        fresh = queued.result(10)  # ran while the hung call still holds the old thread
        assert not stuck.done()
        release.set()
        assert stuck.result(10) == "late"
    assert compute.call(threading.get_ident) == fresh
    compute.close()


def test_close_refuses_later_calls() -> None:
    compute = ComputeThread()
    assert compute.call(lambda: 1) == 1
    compute.close()
    with pytest.raises(RuntimeError, match="closed"):
        compute.call(lambda: 2)


def test_openmp_defaults_keep_what_the_operator_set() -> None:
    env: dict[str, str] = {}
    set_openmp_defaults(env)
    assert int(env["GOMP_SPINCOUNT"]) > 300_000  # longer than libgomp's own default
    env = {"GOMP_SPINCOUNT": "42"}
    set_openmp_defaults(env)
    assert env == {"GOMP_SPINCOUNT": "42"}
