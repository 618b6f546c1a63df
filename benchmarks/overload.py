"""Overload: what inferd does at 5x its measured capacity, for a tensor model and an LLM.

    .venv/bin/python benchmarks/overload.py [--quick] [--only tensor|llm|fairness]

For each model, in one `inferd serve` process (`--no-auth`: the server's own admission, not governance):
  1. unloaded latency: a closed loop at concurrency 1 for about 10 s (p50/p99 of some hundreds of requests);
  2. capacity: a closed loop at the model's concurrency (requests/s);
  3. overload: an open loop (Poisson arrivals) at 5x that capacity for 60 s (`--quick`: 15 s).
Checks (issue 5): zero 5xx; every refusal (429) arrives in <= 50 ms; p99 latency of admitted requests
<= 3x the unloaded p99; server RSS growth over the overload <= 10%. Then fairness (`run_fairness`): tenant
a floods the LLM engine while tenant b sends one request a second; b's TTFT p99 <= 2x its idle p99.

Models: `fixedcost`, an ONNX model whose batch costs the same at any batch size (a 1024x1024 matrix product
driven by the input, ~2 GFLOP per batch: what a GPU kernel at small batch looks like), with dynamic batching
(max batch 8, queue of 8); and the demo's random-weight Llama (256 hidden, 4 layers) with max_num_seqs 8
and a waiting queue bounded by expected wait (`max_queue_wait_ms: 40`), 32 prompt / 32 output tokens. The
load generator (`inferd.loadgen`) runs in this process, on the same 2 cores as the server, without garbage
collection while it measures. Rewrites the `overload` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from v2_report import update_results_file
from v2_servers import WORK, Running, cpu_cores, cpu_snapshot, start_inferd

from inferd.engine.compute_thread import ComputeThread, set_openmp_defaults
from inferd.loadgen.openai import OpenAIBenchOptions, run_openai_sync
from inferd.loadgen.profile import ProfileOptions, Sample, StepReport, step_report
from inferd.loadgen.v2 import V2BenchOptions, run_v2_sync

MULTIPLIER = 5.0
REFUSAL_BOUND_MS = 50.0
P99_FACTOR = 3.0
RSS_GROWTH = 0.10


def fixed_cost_model(path: Path, n: int = 1024) -> Path:
    """y = x + 0 * sum((A + s) @ B), s = 0 * sum(x): one n x n product per batch, whatever its size (the
    input dependence stops ONNX Runtime from folding it away)."""
    rng = np.random.default_rng(0)
    a = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "A")
    b = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "B")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=0),
        helper.make_node("Mul", ["sx", "zero"], ["s"]),
        helper.make_node("Add", ["A", "s"], ["a2"]),
        helper.make_node("MatMul", ["a2", "B"], ["p"]),
        helper.make_node("ReduceSum", ["p"], ["sp"], keepdims=0),
        helper.make_node("Mul", ["sp", "zero"], ["z"]),
        helper.make_node("Add", ["x", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fixedcost",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [a, b, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


TENSOR_CONFIG = """runtime: onnx
max_batch_size: 8
dynamic_batching:
  max_queue_delay_ms: 1
  preferred_batch_sizes: [8]
  max_queue_size: 8
instances: 1
intra_op_threads: 1
inter_op_threads: 1
"""
LLM_CONFIG = """runtime: llm
dtype: float32
max_model_len: 256
max_num_seqs: 8
max_num_batched_tokens: 512
max_queue_wait_ms: 40
"""


@dataclass
class Case:
    name: str
    unloaded: StepReport
    capacity_rps: float
    overload: StepReport
    rss_before_mb: float
    rss_after_mb: float
    fivexx: int
    cores: dict[str, float]
    """Average cores used during the overload by the server, the client and other processes."""

    def checks(self) -> list[tuple[str, str, str, bool]]:
        ref_max = self.overload.refusal_latency.max_ms
        p99, base = self.overload.admitted_latency.p99_ms, self.unloaded.admitted_latency.p99_ms
        growth = self.rss_after_mb / self.rss_before_mb - 1
        return [
            ("5xx responses", str(self.fivexx), "0", self.fivexx == 0),
            ("slowest refusal", f"{ref_max:.1f} ms", f"≤ {REFUSAL_BOUND_MS:.0f} ms",
             self.overload.refused == 0 or ref_max <= REFUSAL_BOUND_MS),
            ("admitted p99 / unloaded p99", f"{p99 / base:.2f}", f"≤ {P99_FACTOR:.0f}",
             p99 <= P99_FACTOR * base),
            ("server RSS growth", f"{growth:+.1%}", f"≤ {RSS_GROWTH:.0%}", growth <= RSS_GROWTH),
        ]  # fmt: skip


@contextlib.contextmanager
def client_gc_paused() -> Iterator[None]:
    """No garbage collection in this process (the load generator) while it measures: a full collection of
    its heap (torch, onnx, the outcomes of tens of thousands of requests) stops its event loop for 50-100 ms,
    and every request in flight then carries the pause in its latency, though the server answered in time."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fivexx(report: StepReport) -> int:
    return sum(n for kind, n in report.failed.items() if kind.startswith("http_5"))


def run_tensor(server: Running, seconds: float) -> Case:
    base = V2BenchOptions(url=server.http_url, model="fixedcost", duration_s=10.0, warmup_s=1.0)

    def samples(opts: V2BenchOptions) -> list[Sample]:
        result = run_v2_sync(opts)
        return [Sample(s, d, e) for s, d, e in result.samples]

    quiet = samples(_replace(base, concurrency=1, keep_samples=True))
    unloaded = step_report(0.0, 0.0, base.duration_s, quiet, ProfileOptions())
    capacity = run_v2_sync(_replace(base, concurrency=32)).stats.throughput_rps
    print(f"fixedcost: unloaded p99 {unloaded.admitted_latency.p99_ms:.1f} ms, capacity {capacity:.0f} req/s",
          flush=True)  # fmt: skip
    rss_before = rss_mb(server.proc.pid)
    rate = capacity * MULTIPLIER
    before = cpu_snapshot(server)
    with client_gc_paused():
        loud = samples(_replace(base, rate=rate, duration_s=seconds, keep_samples=True, check_first=False,
                                max_connections=1024))  # fmt: skip
    cores = cpu_cores(before, cpu_snapshot(server))
    overload = step_report(MULTIPLIER, rate, seconds, loud, ProfileOptions())
    return Case("tensor (fixedcost)", unloaded, capacity, overload, rss_before, rss_mb(server.proc.pid),
                fivexx(overload), cores)  # fmt: skip


def run_llm(server: Running, seconds: float) -> Case:
    base = OpenAIBenchOptions(url=server.http_url, model="random-llama", input_len=32, output_len=32,
                              num_requests=12, vocab_size=400, warmup_requests=2)  # fmt: skip

    def samples(opts: OpenAIBenchOptions) -> list[Sample]:
        return [Sample(o.sent, o.done, o.error, o.ttft) for o in run_openai_sync(opts).outcomes]

    # 200 requests (about 10 s, as the tensor model's baseline): the p99 of a dozen would be their maximum
    quiet = run_openai_sync(_replace(base, concurrency=1, num_requests=200))
    quiet_samples = [Sample(o.sent, o.done, o.error, o.ttft) for o in quiet.outcomes]
    unloaded = step_report(0.0, 0.0, quiet.elapsed_s, quiet_samples, ProfileOptions())
    capacity = run_openai_sync(_replace(base, concurrency=8, num_requests=48)).request_rate
    p99 = unloaded.admitted_latency.p99_ms
    print(f"random-llama: unloaded p99 {p99:.1f} ms, capacity {capacity:.1f} req/s", flush=True)
    rss_before = rss_mb(server.proc.pid)
    rate = capacity * MULTIPLIER
    count = max(1, round(rate * seconds))
    before = cpu_snapshot(server)
    with client_gc_paused():
        loud = samples(_replace(base, rate=rate, num_requests=count, warmup_requests=0, seed=7))
    cores = cpu_cores(before, cpu_snapshot(server))
    overload = step_report(MULTIPLIER, rate, seconds, loud, ProfileOptions())
    return Case("LLM (random-llama)", unloaded, capacity, overload, rss_before, rss_mb(server.proc.pid),
                fivexx(overload), cores)  # fmt: skip


FAIR_A_IN_FLIGHT = 64
FAIR_A_PROMPT, FAIR_A_OUTPUT = 192, 24
FAIR_B_PROMPT, FAIR_B_OUTPUT = 16, 2
FAIR_TTFT_FACTOR = 2.0


@dataclass
class Fairness:
    idle_ms: list[float]
    """b alone, a request every `b_interval_s / 4` (the engine's CPUs idle between them)."""
    warm_idle_ms: list[float]
    """b alone, a request every 20 ms (OpenMP's workers still spinning): the faster idle baseline."""
    loaded_ms: list[float]
    a_tokens_per_s: float
    config: str

    def checks(self) -> list[tuple[str, str, str, bool]]:
        # Against the faster of the two idle baselines: a paused engine's slow first step must not make
        # the ratio look good.
        idle = min(_pct(self.idle_ms, 0.99), _pct(self.warm_idle_ms, 0.99))
        loaded = _pct(self.loaded_ms, 0.99)
        return [("B's TTFT p99 loaded / idle", f"{loaded / idle:.2f}", f"≤ {FAIR_TTFT_FACTOR:g}",
                 loaded <= FAIR_TTFT_FACTOR * idle)]  # fmt: skip


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_fairness(model_dir: Path, b_requests: int, b_interval_s: float, compute: ComputeThread) -> Fairness:
    """Tenant a keeps 64 long requests in flight (192 prompt, 24 output tokens, each replaced as soon as it
    ends) while tenant b sends one short request (16 prompt tokens) every `b_interval_s`: b's time to first
    token against the same request on the idle engine. Through the engine loop (`AsyncLLMEngine`, the
    server's engine thread, stepping on the compute thread as in the server) in this process: the HTTP
    gateway passes no tenant with `--no-auth`."""
    import asyncio

    from inferd.engine import CacheConfig, EngineConfig, SamplingParams, SchedulerConfig
    from inferd.engine.async_engine import AsyncLLMEngine
    from inferd.engine.llm_engine import LLMEngine
    from inferd.engine.tokenizer import Tokenizer

    scheduler = SchedulerConfig(max_model_len=512, max_num_seqs=8, max_num_batched_tokens=64,
                                max_prefill_share=0.5, long_prefill_token_threshold=16)  # fmt: skip
    config = EngineConfig(scheduler, CacheConfig(num_blocks=1024))
    rng = np.random.default_rng(3)

    def prompt(length: int) -> list[int]:
        return [int(t) for t in rng.integers(10, 400, length)]

    async def ttft(engine: AsyncLLMEngine, rid: str) -> float:
        start = time.perf_counter()
        stream = await engine.generate(prompt(FAIR_B_PROMPT), SamplingParams(max_tokens=FAIR_B_OUTPUT,
                                       ignore_eos=True), request_id=rid, tenant="b")  # fmt: skip
        first = math.nan
        async for _ in stream:
            if math.isnan(first):
                first = time.perf_counter() - start
        return first * 1000

    async def main() -> Fairness:
        engine = AsyncLLMEngine(
            None,
            Tokenizer.load(model_dir),
            build=lambda: LLMEngine.load(model_dir, config),
            compute=compute,
        )
        try:
            for i in range(5):  # warm-up
                await ttft(engine, f"warm{i}")
            idle, warm_idle = [], []
            for i in range(b_requests):
                idle.append(await ttft(engine, f"idle{i}"))
                await asyncio.sleep(b_interval_s / 4)
            for i in range(b_requests):
                warm_idle.append(await ttft(engine, f"warm-idle{i}"))
                await asyncio.sleep(0.02)
            stop = asyncio.Event()
            a_tokens = [0]

            async def tenant_a(k: int) -> None:
                n = 0
                while not stop.is_set():
                    params = SamplingParams(max_tokens=FAIR_A_OUTPUT, ignore_eos=True)
                    stream = await engine.generate(prompt(FAIR_A_PROMPT), params, request_id=f"a{k}.{n}",
                                                   tenant="a")  # fmt: skip
                    async for chunk in stream:
                        a_tokens[0] += len(chunk.token_ids)
                    n += 1

            flood = [asyncio.create_task(tenant_a(k)) for k in range(FAIR_A_IN_FLIGHT)]
            sched = engine.engine.scheduler
            while sched.num_waiting < FAIR_A_IN_FLIGHT - scheduler.max_num_seqs:
                await asyncio.sleep(0.01)
            loaded = []
            started, tokens0 = time.perf_counter(), a_tokens[0]
            for i in range(b_requests):
                await asyncio.sleep(b_interval_s)
                loaded.append(await ttft(engine, f"b{i}"))
            a_rate = (a_tokens[0] - tokens0) / (time.perf_counter() - started)
            stop.set()
            for task in flood:
                task.cancel()
            await asyncio.gather(*flood, return_exceptions=True)
        finally:
            await asyncio.to_thread(engine.close)
        described = (f"max_num_seqs {scheduler.max_num_seqs}, max_num_batched_tokens "
                     f"{scheduler.max_num_batched_tokens}, max_prefill_share {scheduler.max_prefill_share}, "
                     f"long_prefill_token_threshold {scheduler.long_prefill_token_threshold}")  # fmt: skip
        return Fairness(idle, warm_idle, loaded, a_rate, described)

    with client_gc_paused():
        return asyncio.run(main())


def _replace(opts: Any, **changes: Any) -> Any:
    return dataclasses.replace(opts, **changes)


def report(cases: list[Case], fair: Fairness | None, args: argparse.Namespace, wall_s: float) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python benchmarks/overload.py" + (" --quick" if args.quick else "")
    cmd += f" --only {args.only}" if args.only else ""
    lines = [
        f"## Overload: {MULTIPLIER:g}x measured capacity",
        "",
        f"Command: `{cmd}`, {now}, wall time {wall_s:.0f} s. Machine: {os.cpu_count()} CPUs shared by client "
        f"and server; Python {platform.python_version()}. Overload lasts {args.seconds:.0f} s per model.",
        "",
        "| model | unloaded p50 / p99 ms | capacity req/s | offered req/s | sent | admitted | refused | "
        "admitted p50 / p99 ms | refusal p50 / max ms | other errors | RSS MB before → after | "
        "cores: server / client / other processes |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for c in cases:
        o, u = c.overload, c.unloaded
        failed = ", ".join(f"{k} {n}" for k, n in o.failed.items()) or "-"
        lines.append(
            f"| {c.name} | {u.admitted_latency.p50_ms:.1f} / {u.admitted_latency.p99_ms:.1f} | "
            f"{c.capacity_rps:.1f} | {o.offered_rps:.1f} | {o.sent} | {o.admitted} | {o.refused} | "
            f"{o.admitted_latency.p50_ms:.1f} / {o.admitted_latency.p99_ms:.1f} | "
            f"{o.refusal_latency.p50_ms:.1f} / {o.refusal_latency.max_ms:.1f} | {failed} | "
            f"{c.rss_before_mb:.0f} → {c.rss_after_mb:.0f} | {c.cores['server']:.2f} / "
            f"{c.cores['client']:.2f} / {c.cores['other']:.2f} |"
        )
    lines += ["", "| model | check | measured | target | met |", "|---|---|---|---|---|"]
    checks = [(c.name, check) for c in cases for check in c.checks()]
    checks += [("LLM fairness", check) for check in (fair.checks() if fair is not None else [])]
    for name, (check, measured, target, ok) in checks:
        lines.append(f"| {name} | {check} | {measured} | {target} | {'yes' if ok else 'no'} |")
    if fair is not None:
        i, w, b = fair.idle_ms, fair.warm_idle_ms, fair.loaded_ms
        lines += [
            "",
            f"Fairness (random-llama, engine loop; {fair.config}): tenant a keeps {FAIR_A_IN_FLIGHT} "
            "requests "
            f"of {FAIR_A_PROMPT} prompt / {FAIR_A_OUTPUT} output tokens in flight; tenant b sends "
            f"{len(b)} requests of {FAIR_B_PROMPT} prompt tokens, one every {args.b_interval:g} s. b's TTFT "
            f"idle p50 / p99 {_pct(i, 0.5):.1f} / {_pct(i, 0.99):.1f} ms with {args.b_interval / 4:g} s "
            f"between requests, {_pct(w, 0.5):.1f} / {_pct(w, 0.99):.1f} ms with 20 ms (the check uses "
            "the faster); while a floods "
            f"{_pct(b, 0.5):.1f} / {_pct(b, 0.99):.1f} ms; a still generates {fair.a_tokens_per_s:.0f} "
            "tokens/s.",
        ]
    lines += [
        "",
        "Sent counts what the client managed to send: on 2 shared cores a Python client may fall short of "
        "the offered rate; the admitted and refused counts are what the server answered. Latencies are "
        "measured by the client from each request's scheduled send time; the client does no garbage "
        "collection while it measures (a full collection of its heap stopped its event loop for 50-100 ms, "
        "and the requests in flight then carried the pause). LLM config: "
        + " ".join(f"`{line}`" for line in LLM_CONFIG.splitlines()[2:])
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="15 s of overload instead of 60")
    parser.add_argument("--only", choices=["tensor", "llm", "fairness"], default=None)
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    args.seconds = 15.0 if args.quick else 60.0
    args.b_interval, b_requests = (0.25, 12) if args.quick else (1.0, 60)
    started = time.monotonic()
    set_openmp_defaults()  # as `inferd serve` does, before torch loads
    # This process's torch work runs on one thread, as in the server: a second thread that ran torch
    # makes every engine step pay OpenMP wake-ups (see inferd/engine/compute_thread.py).
    compute = ComputeThread()
    work = WORK / "overload"
    if work.exists():
        shutil.rmtree(work)
    repo = work / "repo"
    fixed_cost_model(repo / "fixedcost" / "1" / "model.onnx")
    (repo / "fixedcost" / "config.yaml").write_text(TENSOR_CONFIG)
    if args.only != "tensor":
        from inferd.demo_llm import build_random_llama

        compute.call(lambda: build_random_llama(repo / "random-llama" / "1"))
        (repo / "random-llama" / "config.yaml").write_text(LLM_CONFIG)
    cases: list[Case] = []
    if args.only != "fairness":
        server = start_inferd(repo, work / "state", work / "server.log")
        try:
            if args.only != "llm":
                cases.append(run_tensor(server, args.seconds))
            if args.only != "tensor":
                cases.append(run_llm(server, args.seconds))
        finally:
            server.stop()
    fair = None
    if args.only in (None, "fairness"):
        fair = run_fairness(repo / "random-llama" / "1", b_requests, args.b_interval, compute)
    section = report(cases, fair, args, time.monotonic() - started)
    print()
    print(section)
    print(json.dumps([c.overload.to_dict() for c in cases], allow_nan=True)[:2000])
    if not args.no_write:
        update_results_file(section, name="overload")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
