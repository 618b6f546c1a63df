"""An asyncio load generator for Open Inference Protocol (V2) servers, over REST (JSON or binary) or gRPC.

Closed loop (`concurrency` workers, each sending its next request when the last one returns) or open loop
(Poisson arrivals at `rate` per second, latency measured from each request's scheduled time so a slow
client or server cannot hide queueing). Request bodies are built once; the hot loop only sends bytes and
reads the reply, so the client stays cheap next to the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from inferd.loadgen.auth import add_api_key_argument
from inferd.loadgen.profile import (
    Sample,
    StepReport,
    add_profile_arguments,
    print_profile,
    profile_options,
    run_profile,
)
from inferd.loadgen.progress import Progress
from inferd.loadgen.shape import check_load_shape
from inferd.loadgen.stats import Recorder, RunStats
from inferd.loadgen.v2_inputs import rows_per_request
from inferd.loadgen.v2_transport import BenchError, Failure, GrpcSender, RestSender, Sender

__all__ = [
    "BenchError",
    "V2BenchOptions",
    "V2BenchResult",
    "add_v2_arguments",
    "format_result",
    "main_v2",
    "options_from_args",
    "run_v2",
    "run_v2_sync",
]

T = TypeVar("T")


@dataclass
class V2BenchOptions:
    """One load-generation run."""

    url: str
    """REST base URL (`http://127.0.0.1:8000`); for gRPC `host:port` or `grpc://host:port`."""
    model: str
    model_version: str | None = None
    """Version to call; None lets the server choose."""
    grpc: bool = False
    """Use gRPC instead of REST."""
    binary: bool = False
    """REST binary tensor extension (ignored with gRPC)."""
    concurrency: int | None = None
    """Closed loop with this many requests in flight. Exclusive with `rate`; neither means 1."""
    rate: float | None = None
    """Open loop: Poisson arrivals at this many requests per second."""
    duration_s: float = 10.0
    """Length of the measurement window."""
    warmup_s: float = 1.0
    """Load before the window, excluded from the statistics."""
    batch_size: int = 1
    """Rows per request (the leading -1 dimension)."""
    timeout_s: float = 60.0
    """Per-request timeout; in open loop also the longest drain after the window."""
    max_connections: int = 256
    """Open loop only: REST connections at most (more in-flight requests queue in the client)."""
    seed: int = 0
    """Seed of the input data and of the arrival process."""
    progress: bool = False
    """Draw a progress bar on stderr."""
    api_key: str | None = None
    """Sent as `Authorization: Bearer` (REST header, gRPC metadata)."""
    keep_samples: bool = False
    """Keep every request's (sent, done, error) in the result (step profiles)."""
    check_first: bool = True
    """Fail the run when the first request fails (a profile step past capacity may see it refused)."""

    def __post_init__(self) -> None:
        check_load_shape(self.concurrency, self.rate)
        if self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise ValueError("duration and timeout must be > 0, warmup >= 0")
        if self.batch_size < 1 or self.max_connections < 1:
            raise ValueError("batch_size and max_connections must be >= 1")

    @property
    def protocol(self) -> str:
        if self.grpc:
            return "grpc"
        return "http-binary" if self.binary else "http-json"


@dataclass
class V2BenchResult:
    """What a run measured."""

    options: V2BenchOptions
    model_version: str | None
    """The version the metadata listed first when none was asked for."""
    rows_per_request: int
    stats: RunStats
    error_examples: dict[str, str] = field(default_factory=dict)
    """The first failure message of each error kind."""
    client_cpu_s: float = 0.0
    """CPU time this process spent during the run (all threads): the client's own cost."""
    wall_s: float = 0.0
    """Wall time of the run, warm-up and drain included."""
    samples: list[tuple[float, float, str | None]] = field(default_factory=list)
    """With `keep_samples`: every measured request as (sent, done, error)."""

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        return {
            "url": o.url,
            "model": o.model,
            "model_version": self.model_version,
            "protocol": o.protocol,
            "mode": "open" if o.rate is not None else "closed",
            "concurrency": o.concurrency if o.rate is None else None,
            "rate": o.rate,
            "batch_size": o.batch_size,
            "rows_per_request": self.rows_per_request,
            "duration_s": o.duration_s,
            "warmup_s": o.warmup_s,
            **self.stats.to_dict(),
            "error_examples": self.error_examples,
            "client_cpu_cores": self.client_cpu_s / self.wall_s if self.wall_s > 0 else 0.0,
        }


async def run_v2(opts: V2BenchOptions) -> V2BenchResult:
    """Fetch metadata, build the request, check one, then load the server for warm-up plus duration."""
    closed = opts.rate is None
    concurrency = opts.concurrency or 1
    sender: Sender
    if opts.grpc:
        sender = GrpcSender(
            opts.url, opts.model, opts.model_version, timeout_s=opts.timeout_s, api_key=opts.api_key
        )
    else:
        connections = concurrency if closed else opts.max_connections
        sender = RestSender(
            opts.url,
            opts.model,
            opts.model_version,
            binary=opts.binary,
            timeout_s=opts.timeout_s,
            connections=connections,
            api_key=opts.api_key,
        )
    try:
        try:
            meta = await sender.metadata()
        except BenchError:
            raise
        except Exception as e:  # connection refused, timeout, malformed reply: all mean "cannot start"
            raise BenchError(f"model metadata from {opts.url}: {type(e).__name__}: {e}") from e
        sender.prepare(meta, opts.batch_size, opts.seed)
        first = await sender.send()
        if first is not None and opts.check_first:
            raise BenchError(f"first request to {opts.model!r} failed: {first[0]}: {first[1]}")
        rows = rows_per_request(meta, opts.batch_size)
        start, cpu_start = time.perf_counter(), time.process_time()
        rec = Recorder(start + opts.warmup_s, start + opts.warmup_s + opts.duration_s)
        if opts.keep_samples:
            rec.samples = []
        examples: dict[str, str] = {}
        progress = Progress(start, rec.window_end, rec) if opts.progress else None
        if progress is not None:
            progress.start()
        try:
            if closed:
                await _closed_loop(sender, rec, examples, concurrency, rows)
            else:
                assert opts.rate is not None
                await _open_loop(sender, rec, examples, opts.rate, rows, opts.timeout_s, opts.seed)
        finally:
            if progress is not None:
                await progress.stop()
        version = opts.model_version or (meta.versions[0] if meta.versions else None)
        cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - start
        return V2BenchResult(opts, version, rows, rec.stats(), examples, cpu_s, wall_s, rec.samples or [])
    finally:
        await sender.close()


def _note(rec: Recorder, examples: dict[str, str], sent: float, rows: int, failure: Failure | None) -> None:
    if failure is None:
        rec.record(sent, time.perf_counter(), items=rows)
    else:
        rec.record(sent, time.perf_counter(), error=failure[0])
        examples.setdefault(failure[0], failure[1])


async def _closed_loop(
    sender: Sender, rec: Recorder, examples: dict[str, str], workers: int, rows: int
) -> None:
    async def worker() -> None:
        while (sent := time.perf_counter()) < rec.window_end:
            _note(rec, examples, sent, rows, await sender.send())

    await asyncio.gather(*(worker() for _ in range(workers)))


async def _open_loop(
    sender: Sender,
    rec: Recorder,
    examples: dict[str, str],
    rate: float,
    rows: int,
    drain_s: float,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed + 1)
    pending: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        _note(rec, examples, scheduled, rows, await sender.send())

    due = time.perf_counter()
    while due < rec.window_end:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))
        pending.add(task)
        task.add_done_callback(pending.discard)
        due += float(rng.exponential(1.0 / rate))
    if pending:
        _, unfinished = await asyncio.wait(set(pending), timeout=drain_s)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        rec.record_unfinished("unfinished", len(unfinished))


def run_sync(coro_fn: Callable[[], Coroutine[Any, Any, T]], *, fast_loop: bool = True) -> T:
    """Run a coroutine on a fresh event loop, uvloop's when installed and `fast_loop` is set."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if fast_loop:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro_fn())


def run_v2_sync(opts: V2BenchOptions) -> V2BenchResult:
    """`run_v2` on its own event loop (uvloop for REST; grpc.aio keeps the default loop)."""
    return run_sync(lambda: run_v2(opts), fast_loop=not opts.grpc)


def add_v2_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `inferd bench v2`."""
    parser.add_argument(
        "--url", required=True, help="REST base URL, or host:port / grpc://host:port with --grpc"
    )
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--model-version", default=None, help="model version (default: the server's choice)")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of REST")
    parser.add_argument("--binary", action="store_true", help="REST binary tensor extension")
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency", type=int, default=None, help="closed loop: requests in flight (default 1)"
    )
    load.add_argument("--rate", type=float, default=None, help="open loop: Poisson arrivals per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1)")
    parser.add_argument("--batch-size", type=int, default=1, help="rows per request (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of inputs and arrivals")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_api_key_argument(parser)
    add_profile_arguments(parser)


def options_from_args(args: argparse.Namespace) -> V2BenchOptions:
    return V2BenchOptions(
        url=args.url,
        model=args.model,
        model_version=args.model_version,
        grpc=args.grpc,
        binary=args.binary,
        concurrency=args.concurrency,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        batch_size=args.batch_size,
        timeout_s=args.timeout,
        seed=args.seed,
        progress=not args.json and sys.stderr.isatty(),
        api_key=args.api_key,
    )


def main_v2(args: argparse.Namespace) -> int:
    """`inferd bench v2`: 0 when some requests succeeded, 1 when none did, 2 when the run could not start."""
    if args.profile == "step":
        return _main_profile(args)
    try:
        result = run_v2_sync(options_from_args(args))
    except (BenchError, ValueError) as e:
        print(f"inferd bench v2: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False))
    else:
        print(format_result(result))
    return 0 if result.stats.ok > 0 else 1


def _main_profile(args: argparse.Namespace) -> int:
    """`--profile step`: capacity from a closed loop at --concurrency (default 64), then open-loop steps."""
    try:
        profile = profile_options(args)
        base = options_from_args(args)
        closed = dataclasses.replace(base, concurrency=base.concurrency or 64, rate=None, progress=False)

        def capacity() -> float:
            return run_v2_sync(closed).stats.throughput_rps

        def step(rate: float) -> list[Sample]:
            opts = dataclasses.replace(
                base, concurrency=None, rate=rate, keep_samples=True, check_first=False, progress=False
            )
            return [Sample(s, d, e) for s, d, e in run_v2_sync(opts).samples]

        def show(report: StepReport) -> None:
            if not args.json:
                done = f"{report.admitted} admitted, {report.refused} refused"
                print(f"step {report.multiplier:g}x done: {done}", file=sys.stderr)

        cap, reports = run_profile(profile, base.duration_s, capacity, step, show)
    except (BenchError, ValueError) as e:
        print(f"inferd bench v2: {e}", file=sys.stderr)
        return 2
    return print_profile(cap, reports, as_json=args.json)


def format_result(result: V2BenchResult) -> str:
    """A short human-readable report."""
    o, s, lat = result.options, result.stats, result.stats.latency
    load = f"rate {o.rate:g}/s (open loop)" if o.rate is not None else f"concurrency {o.concurrency or 1}"
    version = f" version {result.model_version}" if result.model_version else ""
    lines = [
        f"model {o.model}{version} over {o.protocol}, {load}, batch size {o.batch_size}, {s.elapsed_s:.2f} s",
        f"requests:   {s.ok} ok, {s.error_count} failed",
        f"throughput: {s.throughput_rps:.1f} req/s, {s.items_per_s:.1f} rows/s",
        f"client CPU: {result.client_cpu_s / result.wall_s if result.wall_s else 0:.2f} cores",
    ]
    if lat.count:
        lines.append(
            "latency ms: "
            + "  ".join(
                f"{k} {_ms(v)}"
                for k, v in (
                    ("mean", lat.mean_ms),
                    ("p50", lat.p50_ms),
                    ("p90", lat.p90_ms),
                    ("p95", lat.p95_ms),
                    ("p99", lat.p99_ms),
                    ("max", lat.max_ms),
                )
            )
        )
    for kind, n in sorted(s.errors.items()):
        example = result.error_examples.get(kind, "")
        lines.append(f"error {kind}: {n}" + (f" (first: {example})" if example else ""))
    return "\n".join(lines)


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"
