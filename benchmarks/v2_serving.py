"""V2 serving benchmark: inferd against in-process ONNX Runtime and MLServer, in one run.

    .venv/bin/python benchmarks/v2_serving.py [--quick] [--skip-mlserver]      (or `make bench`)

Two models: a light MLP 256-512-512-10 and a heavy MLP 1024-4096-4096-1024-10 (~50 MFLOP per row).
  (a) in-process ONNX Runtime at batch 32: the ceiling;
  (b) inferd over REST binary and gRPC at concurrency 1, 16, 64, dynamic batching on and off (and REST JSON
      with batching on, to compare with MLServer);
  (c) MLServer (its own venv, a custom ONNX Runtime runtime with adaptive batching) over REST JSON (MLServer
      has no REST binary extension) and gRPC.
Every request carries one row; the client (`inferd.loadgen`) runs in this process, the servers in their own.
Prints the tables and ratios and rewrites the marked section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from v2_report import DISTURBED_CORES, Outcome, render_report, update_results_file
from v2_servers import (
    WORK,
    Running,
    ServedModel,
    batch_counters,
    batch_summary,
    cpu_cores,
    cpu_snapshot,
    machine_busy_s,
    mlserver_version,
    start_inferd,
    start_mlserver,
    write_inferd_repository,
    write_mlserver_models,
)

from inferd import onnx_models
from inferd.loadgen.v2 import BenchError, V2BenchOptions, run_v2_sync

CONCURRENCIES = (1, 16, 64)
ORT_BATCH = 32


@dataclass(frozen=True)
class BenchModel:
    key: str
    """Short name (`mlp`, `heavy`); inferd serves `key` (batching) and `key_nobatch`."""
    sizes: list[int]
    delay_ms: float
    """Dynamic-batching queue delay."""

    @property
    def width_in(self) -> int:
        return self.sizes[0]

    @property
    def width_out(self) -> int:
        return self.sizes[-1]


MODELS = (
    BenchModel("mlp", [256, 512, 512, 10], delay_ms=1.0),
    BenchModel("heavy", [1024, 4096, 4096, 1024, 10], delay_ms=2.0),
)


@dataclass
class Plan:
    duration_s: float
    warmup_s: float
    ort_seconds: float
    threads: int
    skip_mlserver: bool
    retries: int
    """Extra attempts at a point disturbed by other work."""
    outcomes: list[Outcome] = field(default_factory=list)


def build_onnx(model: BenchModel) -> Path:
    path = WORK / "onnx" / f"{model.key}.onnx"
    if not path.exists():
        if model.key == "heavy":
            onnx_models.heavy_mlp(path)
        else:
            onnx_models.mlp(path, model.sizes)
    return path


def flops_per_row(model: BenchModel) -> float:
    return float(sum(2 * a * b for a, b in zip(model.sizes, model.sizes[1:], strict=False)))


def ort_baseline(path: Path, width: int, threads: int, seconds: float, spin: bool) -> dict[str, float]:
    """Rows per second of `session.run` at batch 32 in this process (threads as the servers use), with the
    intra-op threads spin-waiting between runs (ONNX Runtime's default) or not."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((ORT_BATCH, width)).astype(np.float32)
    for _ in range(3):
        session.run(None, {"input": x})
    runs, start, busy, mine = 0, time.perf_counter(), machine_busy_s(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        session.run(None, {"input": x})
        runs += 1
    other = max(machine_busy_s() - busy - (time.process_time() - mine), 0.0) / elapsed
    del session
    gc.collect()
    rows_per_s, ms_per_batch = runs * ORT_BATCH / elapsed, elapsed / runs * 1e3
    return {"rows_per_s": rows_per_s, "ms_per_batch": ms_per_batch, "other_cores": other}


def ort_ceiling(
    plan: Plan, model: BenchModel, path: Path, previous: dict[str, float] | None
) -> dict[str, float]:
    """The best in-process rate with and without spinning; a disturbed measurement is repeated, and the
    result merged with `previous` (the ceiling is measured before and after the servers: the best counts)."""
    out = dict(previous or {})
    for spin, key in ((True, "spin"), (False, "nospin")):
        for _ in range(plan.retries + 1):
            r = ort_baseline(path, model.width_in, plan.threads, plan.ort_seconds, spin)
            if r["rows_per_s"] > out.get(f"{key}_rows_per_s", 0.0):
                out[f"{key}_rows_per_s"] = r["rows_per_s"]
                if r["rows_per_s"] > out.get("rows_per_s", 0.0):
                    out.update(r, spin=float(spin))
            if r["other_cores"] <= DISTURBED_CORES:
                break
    print(
        f"in-process ORT {model.key:6} batch {ORT_BATCH}: {out['spin_rows_per_s']:.0f} rows/s spinning, "
        f"{out['nospin_rows_per_s']:.0f} without",
        flush=True,
    )
    return out


def measure(
    plan: Plan, server: Running, label: str, model: str, key: str, protocol: str, batching: bool
) -> None:
    """One closed-loop point per concurrency. A point disturbed by other work on the machine is measured
    again (up to `plan.retries` times) and the least disturbed run kept; a failed run is recorded."""
    for c in CONCURRENCIES:
        opts = V2BenchOptions(
            url=server.grpc_target if protocol == "grpc" else server.http_url,
            model=model,
            grpc=protocol == "grpc",
            binary=protocol == "http-binary",
            concurrency=c,
            duration_s=plan.duration_s,
            warmup_s=plan.warmup_s,
            timeout_s=60.0,
            progress=sys.stderr.isatty(),
        )
        tag = f"{label:8} {key:6} {protocol:11} batching={'on ' if batching else 'off'} c={c:<3}"
        best: Outcome | None = None
        for _ in range(plan.retries + 1):
            outcome = _measure_point(opts, server, tag, Outcome(label, key, protocol, batching, c, None))
            if best is None or (outcome.result is not None and outcome.cores("other") < best.cores("other")):
                best = outcome
            if outcome.result is None or not outcome.cores("other") > DISTURBED_CORES:
                break
            print(f"{tag} disturbed by other work: measuring again", flush=True)
        assert best is not None
        plan.outcomes.append(best)


def _measure_point(opts: V2BenchOptions, server: Running, tag: str, outcome: Outcome) -> Outcome:
    inferd = outcome.server == "inferd"
    try:
        counters = batch_counters(server.http_url, opts.model) if inferd else {}
        before = cpu_snapshot(server)
        result = run_v2_sync(opts).to_dict()
        result["cpu_cores"] = cores = cpu_cores(before, cpu_snapshot(server))
        if inferd:
            result["server_batches"] = batch_summary(counters, batch_counters(server.http_url, opts.model))
        outcome.result = result
        print(
            f"{tag} {result['throughput_rps']:9.1f} req/s  p50 {result['latency_ms']['p50_ms']:7.2f} ms"
            f"  p99 {result['latency_ms']['p99_ms']:7.2f} ms  errors {result['errors_total']}"
            f"  cores: server {cores['server']:.2f} client {cores['client']:.2f} other {cores['other']:.2f}",
            flush=True,
        )
    except BenchError as e:
        outcome.error = str(e)
        print(f"{tag} FAILED: {e}", flush=True)
    if not server.alive():
        raise RuntimeError(f"{outcome.server} exited during the benchmark; log tail:\n{server.log_tail()}")
    time.sleep(0.5)
    return outcome


def run_inferd(plan: Plan, onnx: dict[str, Path]) -> None:
    served = []
    for m in MODELS:
        served.append(ServedModel(m.key, onnx[m.key], batching=True, max_queue_delay_ms=m.delay_ms))
        served.append(ServedModel(f"{m.key}_nobatch", onnx[m.key], batching=False))
    repo = WORK / "inferd-repo"
    write_inferd_repository(repo, served, plan.threads)
    server = start_inferd(repo, WORK / "inferd-state", WORK / "inferd.log")
    try:
        for m in MODELS:
            for protocol in ("http-binary", "grpc"):
                measure(plan, server, "inferd", m.key, m.key, protocol, True)
                measure(plan, server, "inferd", f"{m.key}_nobatch", m.key, protocol, False)
            if not plan.skip_mlserver:
                measure(plan, server, "inferd", m.key, m.key, "http-json", True)
    finally:
        server.stop()


def run_mlserver(plan: Plan, onnx: dict[str, Path]) -> None:
    root = WORK / "mlserver-models"
    write_mlserver_models(root, [(m.key, onnx[m.key], m.width_in, m.width_out) for m in MODELS], plan.threads)
    server = start_mlserver(root, [m.key for m in MODELS], WORK / "mlserver.log")
    try:
        for m in MODELS:
            for protocol in ("http-json", "grpc"):
                measure(plan, server, "MLServer", m.key, m.key, protocol, True)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (3 s each) for a smoke test")
    parser.add_argument("--skip-mlserver", action="store_true", help="leave MLServer out")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads"
    )
    parser.add_argument(
        "--retries", type=int, default=2, help="re-measure a point disturbed by other work (default 2)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    plan = Plan(
        duration_s=3.0 if args.quick else 10.0,
        warmup_s=0.5 if args.quick else 1.0,
        ort_seconds=2.0 if args.quick else 5.0,
        threads=args.threads,
        skip_mlserver=args.skip_mlserver,
        retries=args.retries,
    )
    WORK.mkdir(parents=True, exist_ok=True)
    load = _load_average()
    if load > 0.5:
        print(
            f"warning: load average {load:.2f} before starting: other work will skew the numbers",
            file=sys.stderr,
        )
    started = time.time()
    onnx = {m.key: build_onnx(m) for m in MODELS}
    baselines = {m.key: ort_ceiling(plan, m, onnx[m.key], None) for m in MODELS}
    run_inferd(plan, onnx)
    ml_version = None
    if not plan.skip_mlserver:
        run_mlserver(plan, onnx)
        ml_version = mlserver_version()
    baselines = {m.key: ort_ceiling(plan, m, onnx[m.key], baselines[m.key]) for m in MODELS}
    command = "python benchmarks/v2_serving.py" + "".join(
        f" {flag}" for flag, on in (("--quick", args.quick), ("--skip-mlserver", args.skip_mlserver)) if on
    )
    env = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "cpus": str(os.cpu_count()),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "mlserver": ml_version or "skipped",
        "threads": str(plan.threads),
        "duration": f"{plan.duration_s:g} s measured after {plan.warmup_s:g} s warm-up per point",
        "wall": f"{time.time() - started:.0f} s",
        "load": f"{load:.2f}",
    }
    flops = {m.key: flops_per_row(m) for m in MODELS}
    report = render_report(env, baselines, flops, plan.outcomes, ORT_BATCH)
    print()
    print(report)
    (WORK / "v2_serving.json").write_text(
        json.dumps(
            {"env": env, "baselines": baselines, "runs": [o.to_dict() for o in plan.outcomes]}, indent=1
        )
    )
    if not args.no_write:
        update_results_file(report)
        print("updated benchmarks/RESULTS.md", file=sys.stderr)
    return 0


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
