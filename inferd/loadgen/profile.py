"""Step load profiles (`inferd bench v2|openai --profile step`): what a server does past its capacity.

First the capacity: the throughput of a closed loop (or `--capacity R`, given). Then one open-loop step per
multiple of it (`--steps 1,2,5` by default), each as long as `--duration`. Per step: the offered rate, how
many requests were admitted and how many refused (HTTP 429/503, gRPC RESOURCE_EXHAUSTED/UNAVAILABLE), how
fast refusals came back, the latency percentiles of admitted requests, and the goodput: admitted requests
per second that met the latency SLO (`--slo-latency-ms`, and `--slo-ttft-ms` for streams).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inferd.loadgen.stats import LatencySummary, summarize

REFUSALS = frozenset({"http_429", "http_503", "grpc_RESOURCE_EXHAUSTED", "grpc_UNAVAILABLE"})
"""Error kinds that are the server saying no (as opposed to failing)."""
DEFAULT_STEPS = (1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Sample:
    """One request of a step (seconds from one monotonic clock)."""

    sent: float
    done: float
    error: str | None
    ttft: float = math.nan


@dataclass(frozen=True)
class ProfileOptions:
    steps: tuple[float, ...] = DEFAULT_STEPS
    capacity_rps: float | None = None
    """Given capacity; None measures it with a closed loop first."""
    slo_latency_s: float | None = None
    slo_ttft_s: float | None = None


@dataclass(frozen=True)
class StepReport:
    multiplier: float
    offered_rps: float
    duration_s: float
    sent: int
    admitted: int
    refused: int
    failed: dict[str, int]
    """Errors that are not refusals, by kind."""
    goodput_rps: float
    admitted_latency: LatencySummary
    admitted_ttft: LatencySummary
    refusal_latency: LatencySummary

    @property
    def refusal_rate(self) -> float:
        return self.refused / self.sent if self.sent else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "multiplier": self.multiplier,
            "offered_rps": self.offered_rps,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "admitted": self.admitted,
            "refused": self.refused,
            "refusal_rate": self.refusal_rate,
            "failed": self.failed,
            "goodput_rps": self.goodput_rps,
            "admitted_latency_ms": self.admitted_latency.to_dict(),
            "admitted_ttft_ms": self.admitted_ttft.to_dict(),
            "refusal_latency_ms": self.refusal_latency.to_dict(),
        }


def step_report(
    multiplier: float, offered_rps: float, duration_s: float, samples: Sequence[Sample], opts: ProfileOptions
) -> StepReport:
    admitted = [s for s in samples if s.error is None]
    refused = [s for s in samples if s.error in REFUSALS]
    failed: dict[str, int] = {}
    for s in samples:
        if s.error is not None and s.error not in REFUSALS:
            failed[s.error] = failed.get(s.error, 0) + 1

    def good(s: Sample) -> bool:
        if opts.slo_latency_s is not None and s.done - s.sent > opts.slo_latency_s:
            return False
        return not (opts.slo_ttft_s is not None and not s.ttft <= opts.slo_ttft_s)

    return StepReport(
        multiplier,
        offered_rps,
        duration_s,
        len(samples),
        len(admitted),
        len(refused),
        dict(sorted(failed.items())),
        sum(1 for s in admitted if good(s)) / duration_s if duration_s > 0 else 0.0,
        summarize([s.done - s.sent for s in admitted]),
        summarize([s.ttft for s in admitted if not math.isnan(s.ttft)]),
        summarize([s.done - s.sent for s in refused]),
    )


def run_profile(
    opts: ProfileOptions,
    duration_s: float,
    measure_capacity: Callable[[], float],
    run_step: Callable[[float], Sequence[Sample]],
    on_step: Callable[[StepReport], None] | None = None,
) -> tuple[float, list[StepReport]]:
    """The capacity (measured unless given) and one report per step."""
    capacity = opts.capacity_rps if opts.capacity_rps is not None else measure_capacity()
    if not capacity > 0:
        raise ValueError(f"capacity must be > 0 requests/s, measured {capacity}")
    reports = []
    for m in opts.steps:
        rate = capacity * m
        report = step_report(m, rate, duration_s, run_step(rate), opts)
        reports.append(report)
        if on_step is not None:
            on_step(report)
    return capacity, reports


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        choices=["step"],
        default=None,
        help="step: measure capacity (closed loop at --concurrency), then open-loop steps (--steps)",
    )
    parser.add_argument("--steps", default="1,2,5", help="step multiples of the capacity (default 1,2,5)")
    parser.add_argument(
        "--capacity", type=float, default=None, help="capacity in requests/s (skip measuring)"
    )
    parser.add_argument("--slo-latency-ms", type=float, default=None, help="latency SLO for goodput")
    parser.add_argument("--slo-ttft-ms", type=float, default=None, help="time-to-first-token SLO for goodput")


def profile_options(args: argparse.Namespace) -> ProfileOptions:
    try:
        steps = tuple(float(x) for x in str(args.steps).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--steps: expected comma-separated numbers, got {args.steps!r}") from None
    if not steps or any(not s > 0 for s in steps):
        raise ValueError("--steps: give positive multiples, e.g. 1,2,5")
    for name in ("capacity", "slo_latency_ms", "slo_ttft_ms"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0")
    return ProfileOptions(
        steps,
        args.capacity,
        args.slo_latency_ms / 1000.0 if args.slo_latency_ms is not None else None,
        args.slo_ttft_ms / 1000.0 if args.slo_ttft_ms is not None else None,
    )


def format_profile(capacity: float, reports: Sequence[StepReport]) -> str:
    lines = [
        f"capacity {capacity:.1f} req/s",
        "",
        f"{'step':>5} {'offered/s':>10} {'sent':>7} {'admitted':>9} {'refused':>8} {'goodput/s':>10} "
        f"{'adm p50':>8} {'adm p99':>8} {'ttft p99':>8} {'ref p50':>8} {'ref p99':>8}  other errors",
    ]
    for r in reports:
        cells = (
            r.admitted_latency.p50_ms, r.admitted_latency.p99_ms, r.admitted_ttft.p99_ms,
            r.refusal_latency.p50_ms, r.refusal_latency.p99_ms,
        )  # fmt: skip
        ms = " ".join(f"{'-' if math.isnan(v) else f'{v:.1f}':>8}" for v in cells)
        failed = ", ".join(f"{k} {n}" for k, n in r.failed.items()) or "-"
        lines.append(
            f"{r.multiplier:>4g}x {r.offered_rps:>10.1f} {r.sent:>7} {r.admitted:>9} "
            f"{r.refused:>4} {r.refusal_rate:>3.0%} {r.goodput_rps:>10.1f} {ms}  {failed}"
        )
    lines.append("(latencies in ms: adm = admitted requests, ref = refusals)")
    return "\n".join(lines)


def print_profile(capacity: float, reports: Sequence[StepReport], *, as_json: bool) -> int:
    """Print a profile (table or one JSON object); the exit code: 0 when some request was admitted."""
    if as_json:
        doc = {"capacity_rps": capacity, "steps": [r.to_dict() for r in reports]}
        print(json.dumps(doc, allow_nan=False))
    else:
        print(format_profile(capacity, reports))
    return 0 if any(r.admitted for r in reports) else 1
