"""Gateway overhead in instructions and cache misses per request: governance on vs `--no-auth`, exactly.

    .venv/bin/python benchmarks/gateway_instructions.py [--rate 50] [--duration 20] [--no-write]

`gateway_overhead.py` measures time, which moves by several percent between runs of the same build on these
shared machines. This runs the same two servers (the same repository, tenant, limits, price and budget)
under valgrind's callgrind with its cache model, at a fixed open-loop rate over REST and gRPC, and counts
what the server executes per request: instructions (Ir), first-level instruction and data cache misses
(I1, D1, sized as the CPU reports them) and misses of a 2 MiB second level (this machine's L2), from the
moment the load starts to its end (server start and warm-up excluded), less what the server runs idle in
as long (its background work, measured before the load). A total per request repeats to within about
1% between runs of the same build; the governed server's background work that follows the load (WAL
checkpoints of what its importer wrote) moves the governed-minus-baseline difference by several thousand
instructions. Each count is also given relative to the `--no-auth` baseline of the same run. The server
runs about 50 times slower under valgrind, so the rate stays low (50 req/s by default; gRPC calls time out
above about 70).

Served time follows the misses as much as the instructions: on a saturated event loop, governance code
runs once per request between everything else the server does, so its instructions and data come from
the second level (session 7: at its end, 37-48k more instructions per governed REST request and 1.4k more
first-level instruction misses). Rewrites the `gateway_instructions` section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_overhead import MODEL, configure_tenant, identity_repository
from v2_report import update_results_file
from v2_servers import WORK, Running, start_inferd

from inferd import native
from inferd.loadgen.v2 import V2BenchOptions, run_v2_sync

EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")
CACHES = ["--LL=2097152,16,64"]
"""The first level as valgrind reads it from the CPU; as the second, this machine's per-core 2 MiB L2
(callgrind models two levels: left alone, it would take the shared last level, 480 MiB here)."""


@dataclass(frozen=True)
class Count:
    protocol: str
    mode: str
    requests: int
    events: dict[str, int]
    """What the server ran in the window, less what it runs idle in as long (its background work)."""

    def per_request(self, *names: str) -> float:
        return sum(self.events[n] for n in names) / self.requests


def start_under_callgrind(repo: Path, state: Path, work: Path, mode: str) -> tuple[Running, Path]:
    """`inferd serve` under callgrind with collection off until the load starts."""
    out = work / f"callgrind.{mode}.out"
    for old in work.glob(f"callgrind.{mode}.out*"):
        old.unlink()
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes", *CACHES,
                f"--callgrind-out-file={out}"]  # fmt: skip
    return start_inferd(repo, state, work / f"{mode}.log", auth=mode == "governed", prefix=valgrind), out


def _load(server: Running, protocol: str, key: str | None, rate: float, duration: float) -> int:
    opts = V2BenchOptions(
        url=server.grpc_target if protocol == "grpc" else server.http_url,
        model=MODEL,
        grpc=protocol == "grpc",
        concurrency=None,
        rate=rate,
        duration_s=duration,
        warmup_s=0.0,
        api_key=key,
    )
    result = run_v2_sync(opts).to_dict()
    if result["errors_total"]:
        print(f"  {result['errors_total']} errors: {result.get('errors')}", flush=True)
    return int(result["ok"])


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _totals(out: Path) -> dict[str, int]:
    """The event totals of the last dump of a callgrind output."""
    parts = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
    text = subprocess.run(["callgrind_annotate", "--auto=no", str(parts[-1])], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    for line in text.splitlines():
        if "PROGRAM TOTALS" in line:
            values = [int(v.replace(",", "")) for v in re.findall(r"([\d,]+) \(", line)]
            return dict(zip(EVENTS, values, strict=True))
    raise RuntimeError(f"no totals in {parts[-1]}")


def _idle(seconds: float) -> int:
    time.sleep(seconds)
    return 0


def _window(pid: int, out: Path, work: Callable[[], int]) -> tuple[dict[str, int], float, int]:
    """(event totals, seconds, requests) of running `work` with collection on."""
    _control(pid, "-i", "on")
    started = time.monotonic()
    requests = work()
    seconds = time.monotonic() - started
    _control(pid, "-i", "off")
    _control(pid, "-d")
    return _totals(out), seconds, requests


def measure(repo: Path, work: Path, mode: str, protocols: list[str], args: argparse.Namespace) -> list[Count]:
    state = work / f"state-{mode}"
    if state.exists():
        shutil.rmtree(state)
    server, out = start_under_callgrind(repo, state, work, mode)
    pid = server.proc.pid
    counts = []
    try:
        key = configure_tenant(server, state) if mode == "governed" else None
        # The server's background work (the governance watcher's polls, timers) per second, without load.
        idle, idle_s, _ = _window(pid, out, functools.partial(_idle, args.idle))
        for protocol in protocols:
            _load(server, protocol, key, args.rate, 3.0)  # warm-up: code paths and caches of this protocol
            load = functools.partial(_load, server, protocol, key, args.rate, args.duration)
            events, seconds, ok = _window(pid, out, load)
            net = {e: v - round(idle[e] * seconds / idle_s) for e, v in events.items()}
            counts.append(Count(protocol, mode, ok, net))
            each = counts[-1].per_request("Ir")
            print(f"{protocol:5} {mode:8} {ok} requests: {each:,.0f} instructions each", flush=True)
    finally:
        server.stop()
    return counts


def report(counts: list[Count], args: argparse.Namespace, wall_s: float) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Gateway overhead in instructions: governance on vs `--no-auth` (callgrind)",
        "",
        f"Command: `python benchmarks/gateway_instructions.py`, {now}, wall time {wall_s:.0f} s. "
        f"Open loop at {args.rate:g} req/s for {args.duration:g} s per point under valgrind's callgrind "
        f"(first level as the CPU reports it, second level 2 MiB); per request, over everything the server "
        f"process ran in the window less what it runs idle in as long (measured for {args.idle:g} s before "
        f"the load: the governance watcher's polls). Governance modules compiled: "
        f"{len(native.compiled())} of {len(native.MODULES)}.",
        "",
        "| protocol | mode | requests | instructions | I1 misses | D1 misses | L2 misses |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    by = {(c.protocol, c.mode): c for c in counts}
    for c in counts:
        lines.append(
            f"| {c.protocol} | {c.mode} | {c.requests} | {c.per_request('Ir'):,.0f} | "
            f"{c.per_request('I1mr'):,.0f} | {c.per_request('D1mr', 'D1mw'):,.0f} | "
            f"{c.per_request('ILmr', 'DLmr', 'DLmw'):,.0f} |"
        )
    lines += ["", "| protocol | added instructions | ratio | added I1 misses | added D1 misses | "
              "added L2 misses |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for protocol in dict.fromkeys(c.protocol for c in counts):
        base, gov = by.get((protocol, "no-auth")), by.get((protocol, "governed"))
        if base is None or gov is None:
            continue

        def added(*names: str, base: Count = base, gov: Count = gov) -> float:
            return gov.per_request(*names) - base.per_request(*names)

        lines.append(
            f"| {protocol} | {added('Ir'):+,.0f} | {gov.per_request('Ir') / base.per_request('Ir'):.3f} | "
            f"{added('I1mr'):+,.0f} | {added('D1mr', 'D1mw'):+,.0f} | {added('ILmr', 'DLmr', 'DLmw'):+,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per point (default 20)")
    parser.add_argument("--protocols", default="http,grpc", help="comma-separated (default http,grpc)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle baseline (default 10)")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (callgrind) is not installed", file=sys.stderr)
        return 2
    started = time.monotonic()
    work = WORK / "gateway-instructions"
    repo = identity_repository(work)
    protocols = args.protocols.split(",")
    counts = []
    for mode in ("no-auth", "governed"):
        counts += measure(repo, work, mode, protocols, args)
    section = report(counts, args, time.monotonic() - started)
    print()
    print(section)
    if not args.no_write:
        update_results_file(section, name="gateway_instructions")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
