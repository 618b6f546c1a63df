"""A one-line progress bar on stderr for load generators (no dependency; the caller decides when to draw)."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from inferd.loadgen.stats import Recorder

WIDTH = 30
INTERVAL_S = 0.5


class Progress:
    """Redraws `[####......] 3.5/11.0s  1234 ok  0 err  456 req/s` every half second until stopped."""

    def __init__(self, start: float, end: float, recorder: Recorder, stream: TextIO | None = None) -> None:
        self._start = start
        self._end = end
        self._rec = recorder
        self._stream = stream if stream is not None else sys.stderr
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._stream.write("\r" + " " * (WIDTH + 60) + "\r")
        self._stream.flush()

    async def _run(self) -> None:
        last_t, last_ok = time.perf_counter(), self._rec.seen_ok
        while True:
            await asyncio.sleep(INTERVAL_S)
            now, ok = time.perf_counter(), self._rec.seen_ok
            rate = (ok - last_ok) / (now - last_t) if now > last_t else 0.0
            last_t, last_ok = now, ok
            self._stream.write("\r" + self.line(now, rate))
            self._stream.flush()

    def line(self, now: float, rate: float) -> str:
        total = self._end - self._start
        done = min(max(now - self._start, 0.0), total)
        filled = int(WIDTH * done / total) if total > 0 else WIDTH
        bar = "#" * filled + "." * (WIDTH - filled)
        phase = "warm-up" if now < self._rec.window_start else ("drain" if now >= self._end else "measure")
        return (
            f"[{bar}] {done:5.1f}/{total:.1f}s {phase:<7} {self._rec.seen_ok:>8} ok "
            f"{self._rec.seen_errors:>6} err {rate:9.1f} req/s"
        )
