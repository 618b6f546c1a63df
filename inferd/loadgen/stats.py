"""Outcome recording for load generators: latency percentiles, throughput and error counts.

Protocol-neutral: the V2 load generator uses it, and so can any other client (an OpenAI-API load generator
records time to first token with `summarize`). Times are seconds from one monotonic clock
(`time.perf_counter`); summaries report milliseconds.

A run has a warm-up, a measurement window `[window_start, window_end)` and a drain. Only requests *sent*
inside the window count; they are followed to completion, so latency under overload is not cut short.
Throughput divides the measured requests by the time from the window's start until the later of its end
and the last measured completion: a server that falls behind does not get credit for requests it finished
after the window closed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)
"""The percentiles every summary reports."""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) of ascending values, interpolating linearly between ranks.

    The same definition as numpy's default (`method="linear"`). NaN for no values.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = (n - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    frac = rank - lo
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * frac


@dataclass(frozen=True)
class LatencySummary:
    """Distribution of one latency-like quantity, in milliseconds (NaN when there are no samples)."""

    count: int
    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) for k, v in self.__dict__.items()}


def summarize(values_s: Sequence[float]) -> LatencySummary:
    """Summary of durations given in seconds."""
    ordered = sorted(values_s)
    n = len(ordered)
    if n == 0:
        nan = math.nan
        return LatencySummary(0, nan, nan, nan, nan, nan, nan, nan)
    p50, p90, p95, p99 = (percentile(ordered, q) * 1e3 for q in PERCENTILES)
    return LatencySummary(
        count=n,
        mean_ms=math.fsum(ordered) / n * 1e3,
        min_ms=ordered[0] * 1e3,
        max_ms=ordered[-1] * 1e3,
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
    )


@dataclass(frozen=True)
class RunStats:
    """What one measurement window saw."""

    elapsed_s: float
    """Window start to the later of window end and the last measured completion."""
    ok: int
    """Requests that succeeded."""
    items: int
    """Work units in the successful requests (rows for tensor models, tokens for LLMs)."""
    errors: dict[str, int]
    """Failed requests by kind (`http_503`, `grpc_UNAVAILABLE`, `ClientConnectionError`, ...)."""
    latency: LatencySummary
    """Latency of successful requests."""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput_rps(self) -> float:
        """Successful requests per second."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "elapsed_s": self.elapsed_s,
            "ok": self.ok,
            "errors_total": self.error_count,
            "errors": dict(sorted(self.errors.items())),
            "throughput_rps": self.throughput_rps,
            "items_per_s": self.items_per_s,
            "latency_ms": self.latency.to_dict(),
        }


@dataclass
class Recorder:
    """Collects outcomes; keeps only requests sent inside `[window_start, window_end)`.

    Outcomes outside the window (warm-up) are still counted in `seen_ok`/`seen_errors` for progress display.
    """

    window_start: float
    window_end: float
    latencies: list[float] = field(default_factory=list)
    items: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    last_end: float = -math.inf
    seen_ok: int = 0
    seen_errors: int = 0
    samples: list[tuple[float, float, str | None]] | None = None
    """When a list: every request of the window as (sent, done, error kind or None) (step profiles)."""

    def __post_init__(self) -> None:
        if self.window_end < self.window_start:
            raise ValueError("window_end must not precede window_start")

    def in_window(self, sent_at: float) -> bool:
        return self.window_start <= sent_at < self.window_end

    def record(self, sent_at: float, done_at: float, *, items: int = 1, error: str | None = None) -> None:
        """One finished request; `error` names its failure kind, None for success."""
        if error is None:
            self.seen_ok += 1
        else:
            self.seen_errors += 1
        if not self.in_window(sent_at):
            return
        self.last_end = max(self.last_end, done_at)
        if self.samples is not None:
            self.samples.append((sent_at, done_at, error))
        if error is None:
            self.latencies.append(done_at - sent_at)
            self.items += items
        else:
            self.errors[error] = self.errors.get(error, 0) + 1

    def record_unfinished(self, kind: str, count: int) -> None:
        """Requests of the window abandoned at the end of the drain."""
        if count > 0:
            self.errors[kind] = self.errors.get(kind, 0) + count

    def stats(self) -> RunStats:
        end = max(self.window_end, self.last_end)
        return RunStats(
            elapsed_s=end - self.window_start,
            ok=len(self.latencies),
            items=self.items,
            errors=dict(self.errors),
            latency=summarize(self.latencies),
        )


def _json_number(v: Any) -> Any:
    """NaN is not JSON: report it as null."""
    if isinstance(v, float) and math.isnan(v):
        return None
    return v
