"""Gateway overhead: what API keys, rate limits, budgets and the durable usage ledger cost per request.

    .venv/bin/python benchmarks/gateway_overhead.py [--quick]

One trivial ONNX model (a 4-float identity) served by two inferd processes started from the same
repository: one with governance on (an API key of a tenant with requests- and tokens-per-minute limits, a
concurrency cap, a price, a total cost budget: every check runs and every request gets a ledger row committed
before its response) and one with `--no-auth`. The load generator (`inferd.loadgen`, this process) runs a
closed loop at concurrency 64 against each, alternating off/on for several rounds so drift on this shared
machine hits both alike; the median round of each is compared. Targets (issue 4): ≤ 1 ms added at p50,
≤ 15% throughput lost. Rewrites the `gateway_overhead` section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx import TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parent))

from v2_report import update_results_file
from v2_servers import (
    WORK,
    Running,
    ServedModel,
    cpu_cores,
    cpu_snapshot,
    start_inferd,
    write_inferd_repository,
)

from inferd import native, onnx_models
from inferd.loadgen.v2 import V2BenchOptions, run_v2_sync

MODEL = "identity"
CONCURRENCY = 64


@dataclass
class Point:
    mode: str
    protocol: str
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cores: float
    ok: int


def _admin(url: str, key: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    req.add_header("authorization", f"Bearer {key}")
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def identity_repository(work: Path) -> Path:
    """A model repository under `work` serving the trivial model with dynamic batching."""
    work.mkdir(parents=True, exist_ok=True)
    onnx = onnx_models.identity(work / "identity.onnx", TensorProto.FLOAT, ["batch", 4])
    repo = work / "repo"
    write_inferd_repository(repo, [ServedModel(MODEL, onnx, batching=True)], threads=1)
    return repo


def configure_tenant(server: Running, state_dir: Path) -> str:
    """A tenant with every kind of limit (none of them reached by the run) and a user key for it."""
    admin = (state_dir / "admin.key").read_text().strip()
    url = server.http_url
    _admin(url, admin, "PUT", "/admin/v1/tenants/bench", {"rpm": 100_000_000, "tpm": 100_000_000,
                                                         "max_concurrent": 10_000})  # fmt: skip
    _admin(url, admin, "PUT", "/admin/v1/prices", {"model": MODEL, "per_inference": 0.0001})
    _admin(url, admin, "PUT", "/admin/v1/budgets", {"tenant": "bench", "period": "total", "max_cost": 1e9})
    created = _admin(url, admin, "POST", "/admin/v1/keys", {"tenant": "bench", "models": [MODEL],
                                                              "rpm": 100_000_000})  # fmt: skip
    return str(created["key"])


def ledger_rows(server: Running, state_dir: Path) -> int:
    admin = (state_dir / "admin.key").read_text().strip()
    rows = _admin(server.http_url, admin, "GET", "/admin/v1/usage?tenant=bench&by=tenant")
    return int(rows[0]["requests"]) if rows else 0


def measure(
    server: Running, mode: str, protocol: str, rnd: int, key: str | None, args: argparse.Namespace
) -> Point:
    opts = V2BenchOptions(
        url=server.grpc_target if protocol == "grpc" else server.http_url,
        model=MODEL,
        grpc=protocol == "grpc",
        binary=protocol == "http-binary",
        concurrency=CONCURRENCY,
        duration_s=args.duration,
        warmup_s=1.0,
        api_key=key,
    )
    before = cpu_snapshot(server)
    result = run_v2_sync(opts).to_dict()
    cores = cpu_cores(before, cpu_snapshot(server))
    lat = result["latency_ms"]
    point = Point(mode, protocol, rnd, result["throughput_rps"], lat["p50_ms"], lat["p99_ms"],
                  result["errors_total"], cores["server"], result["ok"])  # fmt: skip
    print(
        f"round {rnd} {protocol:11} {mode:8} {point.rps:9.1f} req/s  p50 {point.p50_ms:6.2f} ms  "
        f"p99 {point.p99_ms:6.2f} ms  errors {point.errors}  server cores {point.server_cores:.2f}",
        flush=True,
    )
    time.sleep(0.5)
    return point


def median(points: list[Point], mode: str, protocol: str, attr: str) -> float:
    return statistics.median(getattr(p, attr) for p in points if p.mode == mode and p.protocol == protocol)


def report(points: list[Point], args: argparse.Namespace, wall_s: float, ledger: tuple[int, int]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python benchmarks/gateway_overhead.py" + (" --quick" if args.quick else "")
    lines = [
        "## Gateway overhead: governance on vs `--no-auth`",
        "",
        f"Command: `{cmd}`, {now}, wall time {wall_s:.0f} s. Machine: {_cpus()} CPUs shared by client and "
        f"server; Python {platform.python_version()}.",
        "",
        f"Model: 4-float identity (ONNX), dynamic batching on; closed loop, concurrency {CONCURRENCY}, "
        f"{args.duration:.0f} s per point after 1 s warm-up, {args.rounds} rounds alternating off/on; "
        "medians. "
        "Governance on = API key + tenant rpm/tpm/concurrency limits + key rpm limit + price + total cost "
        "budget, and a usage-ledger row (also the audit log's inference entry) made durable before every "
        "response (appended to the ledger journal; imported into SQLite by a child process, whose CPU the "
        "server's counts). The governance modules run compiled (`make native`: "
        f"{len(native.compiled())} of {len(native.MODULES)}).",
        "",
        "| protocol | mode | req/s | p50 ms | p99 ms | server cores | server CPU µs / request | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    checks = []
    for protocol in args.protocols:
        for mode in ("no-auth", "governed"):
            errors = sum(p.errors for p in points if p.mode == mode and p.protocol == protocol)
            rps, p50, p99, cores = (
                median(points, mode, protocol, attr) for attr in ("rps", "p50_ms", "p99_ms", "server_cores")
            )
            per_request_us = cores * 1e6 / rps if rps else float("nan")  # what the server spends per request
            lines.append(
                f"| {protocol} | {mode} | {rps:.1f} | {p50:.2f} | {p99:.2f} | {cores:.2f} | "
                f"{per_request_us:.0f} | {errors} |"
            )
        added = median(points, "governed", protocol, "p50_ms") - median(points, "no-auth", protocol, "p50_ms")
        lost = 1 - median(points, "governed", protocol, "rps") / median(points, "no-auth", protocol, "rps")
        checks.append((protocol, added, lost))
    lines += ["", "| protocol | added p50 ms | target | met | throughput lost | target | met |",
              "|---|---:|---|---|---:|---|---|"]  # fmt: skip
    for protocol, added, lost in checks:
        lines.append(
            f"| {protocol} | {added:+.2f} | ≤ 1 ms | {'yes' if added <= 1.0 else 'no'} | {lost:+.1%} "
            f"| ≤ 15% | {'yes' if lost <= 0.15 else 'no'} |"
        )
    rows, measured_ok = ledger
    lines += ["", f"Ledger check: the governed server's ledger holds {rows} rows; the measured windows alone "
              f"had {measured_ok} successful responses (warm-ups add the rest): "
              f"{'consistent' if rows >= measured_ok else 'ROWS MISSING'}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 s (default 3 rounds of 10 s)")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    args.rounds, args.duration = (2, 5.0) if args.quick else (3, 10.0)
    args.protocols = ["http-json", "grpc"]
    started = time.monotonic()
    work = WORK / "gateway"
    repo = identity_repository(work)
    servers: dict[str, Running] = {}
    states = {mode: work / f"state-{mode}" for mode in ("no-auth", "governed")}
    for state in states.values():
        if state.exists():
            shutil.rmtree(state)
    points: list[Point] = []
    try:
        servers["no-auth"] = start_inferd(repo, states["no-auth"], work / "no-auth.log")
        servers["governed"] = start_inferd(repo, states["governed"], work / "governed.log", auth=True)
        key = configure_tenant(servers["governed"], states["governed"])
        for rnd in range(1, args.rounds + 1):
            for protocol in args.protocols:
                for mode in ("no-auth", "governed"):
                    key_of_mode = key if mode == "governed" else None
                    points.append(measure(servers[mode], mode, protocol, rnd, key_of_mode, args))
        rows = ledger_rows(servers["governed"], states["governed"])
    finally:
        for server in servers.values():
            server.stop()
    measured_ok = sum(p.ok for p in points if p.mode == "governed")
    section = report(points, args, time.monotonic() - started, (rows, measured_ok))
    print()
    print(section)
    if not args.no_write:
        update_results_file(section, name="gateway_overhead")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
