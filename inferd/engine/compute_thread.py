"""One thread for every torch computation of the process: LLM engine steps, embedding batches, loading.

Why one: torch's CPU parallelism is OpenMP (libgomp), and libgomp gives every thread that runs a parallel
region a pool of worker threads of its own. Once the pools' workers outnumber the CPUs, libgomp throttles
them: a worker sleeps after about a hundred spins instead of a few milliseconds, so every parallel region
of every step pays a futex wake-up. Measured on this project's 2-CPU machine: a SmolLM-135M-shaped decode
step took 24.8 ms at batch 1 and 82 ms at batch 32 with one torch thread alive, 43-46 ms and 113-121 ms as
soon as a second thread that had run torch was alive (a second LLM, an embedding model, or the main thread).
A server hosts many models, so their torch work shares this one thread (and its one pool): calls run one at
a time, in arrival order, which on a CPU whose cores each call uses anyway costs no parallelism.

Torch-free: it runs any callable. A call that hangs (a hung device or kernel) can be abandoned: the calls
queued behind it move to a fresh thread, and the stuck one keeps its thread. Calls are served in arrival
order; an LLM has at most one step queued and an embedding model one batch per instance, so a call waits
for at most those of the other models. An LLM's hung-step watchdog times a step from when it starts here;
an embedding model's `execution_timeout_s` also counts that wait.

`set_openmp_defaults` (the server calls it before torch loads) makes that pool's workers spin for about
200 ms after a parallel region before they sleep, as Intel's OpenMP does by default (libgomp: about 4 ms).
On a virtual machine a worker that slept long enough for its CPU to idle came back slowly: the first step
after a pause of 100 ms or more took 15 ms instead of 1.8 (a 4-layer model), and a 16-token request on an
idle server waited 10-14 ms for its first token instead of 4.7. The spinning costs up to 200 ms of one CPU
after the last step of a burst.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Final, TypeVar

T = TypeVar("T")

OPENMP_DEFAULTS: Final = (("GOMP_SPINCOUNT", "15000000"),)
"""libgomp's busy-wait before a worker sleeps, in spins (about 13 ns each on this project's machine)."""


def set_openmp_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set OpenMP's environment for serving where the operator did not: call before torch is imported
    (libgomp reads its environment once, when it loads)."""
    for name, value in OPENMP_DEFAULTS:
        environ.setdefault(name, value)


class _Call:
    __slots__ = ("done", "error", "fn", "owner", "result")

    def __init__(self, fn: Callable[[], object], owner: object) -> None:
        self.fn = fn
        self.owner = owner
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


class ComputeThread:
    """Runs callables on one thread, in order; `call` blocks until its callable returned."""

    def __init__(self, name: str = "inferd-compute") -> None:
        self._name = name
        self._cv = threading.Condition()
        self._queue: deque[_Call] = deque()
        self._running: _Call | None = None
        self._closed = False
        self._generation = 0
        """Which worker takes calls (0: none started yet); a replaced worker ends after its call."""
        self._local = threading.local()

    def call(self, fn: Callable[[], T], *, owner: object = None) -> T:
        """Run `fn` on the compute thread and return what it returned (or raise what it raised). From the
        compute thread itself, `fn` runs at once. `owner` names the caller for `abandon`."""
        if getattr(self._local, "inside", False):
            return fn()
        item = _Call(fn, owner)
        with self._cv:
            if self._closed:
                raise RuntimeError("the compute thread is closed")
            if self._generation == 0:
                self._start_worker()
            self._queue.append(item)
            self._cv.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[return-value]

    def abandon(self, owner: object) -> bool:
        """The call of `owner` in progress will not return (it hung): the calls behind it go to a fresh
        thread. Returns False (and changes nothing) when no call of `owner` is running."""
        with self._cv:
            running = self._running
            if running is None or running.owner is not owner or owner is None:
                return False
            self._running = None
            if not self._closed or self._queue:  # closed: the fresh thread still runs what is queued
                self._start_worker()
            return True

    def close(self) -> None:
        """Stop taking calls; the worker ends once the queue is empty (not joined: a call may hang)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _start_worker(self) -> None:
        self._generation += 1
        threading.Thread(target=self._run, args=(self._generation,), name=self._name, daemon=True).start()

    def _run(self, generation: int) -> None:
        self._local.inside = True
        while True:
            with self._cv:
                while not self._queue and not self._closed and generation == self._generation:
                    self._cv.wait()
                if generation != self._generation or not self._queue:
                    return  # replaced after a hang, or closed with nothing left to run
                item = self._queue.popleft()
                self._running = item
            try:
                item.result = item.fn()
            except BaseException as exc:
                item.error = exc
            with self._cv:
                if self._running is item:
                    self._running = None
            item.done.set()
