"""A streaming load generator for OpenAI-compatible `/v1/completions` servers (LLM serving benchmarks).

Each request sends a prompt of exactly `input_len` random token ids (optionally starting with a prefix of
`shared_prefix_len` ids common to all requests), asks for `output_len` tokens with `ignore_eos`, and streams
the reply as server-sent events with `stream_options.include_usage`. Per request it records time to first
token (TTFT), the gaps between streamed chunks (inter-token latency, ITL), time per output token after the
first (TPOT) and end-to-end latency. Closed loop (`concurrency` requests in flight) or open loop (Poisson
arrivals at `rate` per second), `num_requests` measured requests in all, after unmeasured warm-up requests
whose prompts share nothing with the measured ones (so they cannot warm a prefix cache).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from inferd.loadgen.auth import add_api_key_argument, auth_headers
from inferd.loadgen.profile import Sample, add_profile_arguments, print_profile, profile_options, run_profile
from inferd.loadgen.shape import check_load_shape
from inferd.loadgen.stats import LatencySummary, summarize
from inferd.loadgen.v2 import run_sync

__all__ = [
    "OpenAIBenchOptions",
    "OpenAIBenchResult",
    "RequestOutcome",
    "SSEParser",
    "add_openai_arguments",
    "build_prompts",
    "format_result",
    "main_openai",
    "run_openai",
    "run_openai_sync",
]


class BenchError(Exception):
    """The run could not start (server unreachable, first request refused)."""


@dataclass
class OpenAIBenchOptions:
    """One load-generation run."""

    url: str
    """Server base URL (`http://127.0.0.1:8000`); `/v1/completions` is appended (a trailing `/v1` is fine)."""
    model: str
    input_len: int
    """Prompt tokens per request."""
    output_len: int
    """Output tokens per request (`max_tokens` with `ignore_eos`)."""
    num_requests: int
    """Measured requests."""
    concurrency: int | None = None
    """Closed loop with this many requests in flight. Exclusive with `rate`; neither means 1."""
    rate: float | None = None
    """Open loop: Poisson arrivals at this many requests per second."""
    shared_prefix_len: int = 0
    """Leading prompt tokens common to every measured request."""
    vocab_size: int = 1000
    """Prompt token ids are drawn from `[0, vocab_size)`."""
    warmup_requests: int = 1
    """Unmeasured requests sent one by one first (prompts unrelated to the measured ones)."""
    timeout_s: float = 600.0
    """Per-request timeout."""
    seed: int = 0
    """Seed of the prompts and of the arrival process."""
    progress: bool = False
    """Print a progress line on stderr."""
    api_key: str | None = None
    """Sent as `Authorization: Bearer`."""
    temperature: float = 0.0
    """Sampling temperature of every request (0: greedy)."""

    def __post_init__(self) -> None:
        check_load_shape(self.concurrency, self.rate)
        if self.input_len < 1 or self.output_len < 1 or self.num_requests < 1:
            raise ValueError("input_len, output_len and num_requests must be >= 1")
        if not 0 <= self.shared_prefix_len <= self.input_len:
            raise ValueError("shared_prefix_len must be within 0..input_len")
        if self.vocab_size < 2 or self.warmup_requests < 0 or self.timeout_s <= 0:
            raise ValueError("vocab_size must be >= 2, warmup_requests >= 0, timeout > 0")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError("temperature must be a finite number >= 0")

    @property
    def completions_url(self) -> str:
        base = self.url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            base = "http://" + base
        if not base.endswith("/v1"):
            base += "/v1"
        return base + "/completions"


def build_prompts(
    count: int, input_len: int, vocab_size: int, *, shared_prefix_len: int = 0, seed: int = 0
) -> list[list[int]]:
    """`count` prompts of exactly `input_len` token ids below `vocab_size`; the first `shared_prefix_len`
    are the same in all of them, the rest drawn independently per prompt."""
    if not 0 <= shared_prefix_len <= input_len:
        raise ValueError("shared_prefix_len must be within 0..input_len")
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, vocab_size, size=shared_prefix_len).tolist()
    suffixes = rng.integers(0, vocab_size, size=(count, input_len - shared_prefix_len)).tolist()
    return [prefix + s for s in suffixes]


class SSEParser:
    """Incremental server-sent-events parser: feed bytes as they arrive, get the `data` payload of every
    complete event (multi-line data joined with newlines; comments and other fields ignored)."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        events: list[bytes] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return events
            line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)


@dataclass
class RequestOutcome:
    """One request as the client saw it (seconds from `time.perf_counter`)."""

    sent: float
    done: float = math.nan
    chunk_times: list[float] = field(default_factory=list)
    """Arrival of every streamed chunk that carried a choice."""
    output_tokens: int = 0
    """`usage.completion_tokens` (the number of chunks when the server sent no usage)."""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    error: str | None = None
    error_message: str = ""

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.sent if self.chunk_times else math.nan

    @property
    def e2e(self) -> float:
        return self.done - self.sent

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first; NaN with one token."""
        if self.output_tokens < 2 or not self.chunk_times:
            return math.nan
        return (self.done - self.chunk_times[0]) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]


@dataclass
class OpenAIBenchResult:
    options: OpenAIBenchOptions
    outcomes: list[RequestOutcome]
    elapsed_s: float
    """First measured send to last measured completion."""
    client_cpu_s: float = 0.0

    @property
    def ok(self) -> list[RequestOutcome]:
        return [o for o in self.outcomes if o.error is None]

    @property
    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            if o.error is not None:
                counts[o.error] = counts.get(o.error, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def output_tokens(self) -> int:
        return sum(o.output_tokens for o in self.ok)

    @property
    def request_rate(self) -> float:
        return len(self.ok) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def output_token_rate(self) -> float:
        return self.output_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latencies(self) -> dict[str, LatencySummary]:
        ok = self.ok
        return {
            "ttft": summarize([o.ttft for o in ok if not math.isnan(o.ttft)]),
            "tpot": summarize([o.tpot for o in ok if not math.isnan(o.tpot)]),
            "itl": summarize([gap for o in ok for gap in o.itls]),
            "e2e": summarize([o.e2e for o in ok]),
        }

    def to_dict(self) -> dict[str, Any]:
        o = self.options
        examples: dict[str, str] = {}
        for out in self.outcomes:
            if out.error is not None:
                examples.setdefault(out.error, out.error_message)
        return {
            "url": o.url,
            "model": o.model,
            "mode": "open" if o.rate is not None else "closed",
            "concurrency": (o.concurrency or 1) if o.rate is None else None,
            "rate": o.rate,
            "input_len": o.input_len,
            "output_len": o.output_len,
            "shared_prefix_len": o.shared_prefix_len,
            "num_requests": o.num_requests,
            "ok": len(self.ok),
            "errors": self.errors,
            "error_examples": examples,
            "elapsed_s": self.elapsed_s,
            "request_rate": self.request_rate,
            "output_tokens": self.output_tokens,
            "output_token_rate": self.output_token_rate,
            "prompt_tokens": sum(x.prompt_tokens for x in self.ok),
            "cached_tokens": sum(x.cached_tokens for x in self.ok),
            "client_cpu_s": self.client_cpu_s,
            **{f"{k}_ms": v.to_dict() for k, v in self.latencies().items()},
        }


async def _one(
    session: aiohttp.ClientSession, opts: OpenAIBenchOptions, prompt: list[int], sent: float
) -> RequestOutcome:
    out = RequestOutcome(sent)
    body = {
        "model": opts.model,
        "prompt": prompt,
        "max_tokens": opts.output_len,
        "temperature": opts.temperature,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = 0
    usage: dict[str, Any] | None = None
    try:
        async with session.post(opts.completions_url, json=body) as resp:
            if resp.status != 200:
                out.error, out.error_message = f"http_{resp.status}", (await resp.text())[:300]
                return out
            parser = SSEParser()
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                for event in parser.feed(data):
                    if event == b"[DONE]":
                        continue
                    doc = json.loads(event)
                    if "error" in doc:
                        out.error, out.error_message = "stream_error", str(doc["error"])[:300]
                        return out
                    if doc.get("choices"):
                        out.chunk_times.append(now)
                        chunks += 1
                    if doc.get("usage"):
                        usage = doc["usage"]
    except Exception as exc:  # a failed request is an outcome, not a crash of the run
        out.error, out.error_message = type(exc).__name__, str(exc)[:300]
        return out
    finally:
        out.done = time.perf_counter()
    if usage is not None:
        out.output_tokens = int(usage.get("completion_tokens", 0))
        out.prompt_tokens = int(usage.get("prompt_tokens", 0))
        details = usage.get("prompt_tokens_details") or {}
        out.cached_tokens = int(details.get("cached_tokens") or 0)
    else:
        out.output_tokens = chunks
    if not out.chunk_times:
        out.error, out.error_message = "no_output", "the stream carried no choice"
    return out


async def run_openai(opts: OpenAIBenchOptions) -> OpenAIBenchResult:
    """Warm up (one request at a time), then send the measured requests and follow each to its end."""
    prompts = build_prompts(
        opts.num_requests,
        opts.input_len,
        opts.vocab_size,
        shared_prefix_len=opts.shared_prefix_len,
        seed=opts.seed,
    )
    warmups = build_prompts(
        max(opts.warmup_requests, 1), opts.input_len, opts.vocab_size, seed=opts.seed + 7919
    )
    closed = opts.rate is None
    connections = (opts.concurrency or 1) if closed else 0  # 0: no limit in aiohttp
    timeout = aiohttp.ClientTimeout(total=opts.timeout_s)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), timeout=timeout, headers=auth_headers(opts.api_key)
    ) as session:
        for i in range(opts.warmup_requests):
            first = await _one(session, opts, warmups[i], time.perf_counter())
            if first.error is not None:
                raise BenchError(
                    f"warm-up request to {opts.completions_url} failed: {first.error}: {first.error_message}"
                )
        start, cpu_start = time.perf_counter(), time.process_time()
        done = [0]
        reporter = asyncio.create_task(_report(done, opts.num_requests, start)) if opts.progress else None
        try:
            if closed:
                outcomes = await _closed(session, opts, prompts, opts.concurrency or 1, done)
            else:
                assert opts.rate is not None
                outcomes = await _open(session, opts, prompts, opts.rate, done)
        finally:
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
                sys.stderr.write("\r" + " " * 60 + "\r")
    end = max((o.done for o in outcomes), default=start)
    return OpenAIBenchResult(opts, outcomes, end - start, time.process_time() - cpu_start)


async def _closed(
    session: aiohttp.ClientSession,
    opts: OpenAIBenchOptions,
    prompts: list[list[int]],
    workers: int,
    done: list[int],
) -> list[RequestOutcome]:
    outcomes: list[RequestOutcome | None] = [None] * len(prompts)
    next_index = iter(range(len(prompts)))

    async def worker() -> None:
        for i in next_index:
            outcomes[i] = await _one(session, opts, prompts[i], time.perf_counter())
            done[0] += 1

    await asyncio.gather(*(worker() for _ in range(min(workers, len(prompts)))))
    return [o for o in outcomes if o is not None]


async def _open(
    session: aiohttp.ClientSession,
    opts: OpenAIBenchOptions,
    prompts: list[list[int]],
    rate: float,
    done: list[int],
) -> list[RequestOutcome]:
    rng = np.random.default_rng(opts.seed + 1)
    tasks: list[asyncio.Task[RequestOutcome]] = []

    async def one(prompt: list[int], scheduled: float) -> RequestOutcome:
        out = await _one(session, opts, prompt, scheduled)  # latency from the scheduled time
        done[0] += 1
        return out

    due = time.perf_counter()
    for prompt in prompts:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(prompt, due)))
        due += float(rng.exponential(1.0 / rate))
    return list(await asyncio.gather(*tasks))


async def _report(done: list[int], total: int, start: float) -> None:
    while True:
        await asyncio.sleep(0.5)
        sys.stderr.write(f"\r{done[0]:>6}/{total} requests  {time.perf_counter() - start:7.1f} s")
        sys.stderr.flush()


def run_openai_sync(opts: OpenAIBenchOptions) -> OpenAIBenchResult:
    """`run_openai` on its own event loop (uvloop's when installed)."""
    return run_sync(lambda: run_openai(opts))


def add_openai_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `inferd bench openai`."""
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--input-len", type=int, required=True, help="prompt tokens per request")
    parser.add_argument(
        "--output-len", type=int, required=True, help="output tokens per request (ignore_eos)"
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument(
        "--concurrency", type=int, default=None, help="closed loop: requests in flight (default 1)"
    )
    load.add_argument("--rate", type=float, default=None, help="open loop: Poisson arrivals per second")
    parser.add_argument("--num-requests", type=int, required=True, help="measured requests")
    parser.add_argument(
        "--shared-prefix-len", type=int, default=0, help="leading prompt tokens common to all requests"
    )
    parser.add_argument(
        "--vocab-size", type=int, default=1000, help="prompt token ids are drawn below this (default 1000)"
    )
    parser.add_argument(
        "--warmup-requests", type=int, default=1, help="unmeasured requests first (default 1)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts and arrivals")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_api_key_argument(parser)
    add_profile_arguments(parser)
    parser.add_argument(
        "--duration", type=float, default=20.0, help="--profile: seconds per step (default 20)"
    )


def options_from_args(args: argparse.Namespace) -> OpenAIBenchOptions:
    return OpenAIBenchOptions(
        url=args.url,
        model=args.model,
        input_len=args.input_len,
        output_len=args.output_len,
        num_requests=args.num_requests,
        concurrency=args.concurrency,
        rate=args.rate,
        shared_prefix_len=args.shared_prefix_len,
        vocab_size=args.vocab_size,
        warmup_requests=args.warmup_requests,
        timeout_s=args.timeout,
        seed=args.seed,
        progress=not args.json and sys.stderr.isatty(),
        api_key=args.api_key,
        temperature=args.temperature,
    )


def main_openai(args: argparse.Namespace) -> int:
    """`inferd bench openai`: 0 when some requests succeeded, 1 when none did, 2 when it could not start."""
    if args.profile == "step":
        return _main_profile(args)
    try:
        result = run_openai_sync(options_from_args(args))
    except (BenchError, ValueError) as e:
        print(f"inferd bench openai: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False))
    else:
        print(format_result(result))
    return 0 if result.ok else 1


def _main_profile(args: argparse.Namespace) -> int:
    """`--profile step`: capacity from `--num-requests` at `--concurrency` (closed loop), then open-loop
    steps of `--duration` seconds each."""
    try:
        profile = profile_options(args)
        if not args.duration > 0:
            raise ValueError("--duration must be > 0")
        base = options_from_args(args)
        closed = dataclasses.replace(base, concurrency=base.concurrency or 32, rate=None, progress=False)

        def capacity() -> float:
            return run_openai_sync(closed).request_rate

        def step(rate: float) -> list[Sample]:
            count = max(1, round(rate * args.duration))
            opts = dataclasses.replace(
                base, concurrency=None, rate=rate, num_requests=count, warmup_requests=0, progress=False
            )
            return [Sample(o.sent, o.done, o.error, o.ttft) for o in run_openai_sync(opts).outcomes]

        cap, reports = run_profile(profile, args.duration, capacity, step)
    except (BenchError, ValueError) as e:
        print(f"inferd bench openai: {e}", file=sys.stderr)
        return 2
    return print_profile(cap, reports, as_json=args.json)


def format_result(result: OpenAIBenchResult) -> str:
    """A short human-readable report with a latency table."""
    o = result.options
    load = f"rate {o.rate:g}/s (open loop)" if o.rate is not None else f"concurrency {o.concurrency or 1}"
    prefix = f", shared prefix {o.shared_prefix_len}" if o.shared_prefix_len else ""
    lines = [
        f"model {o.model}, {load}, {o.input_len} in / {o.output_len} out tokens{prefix}, "
        f"{result.elapsed_s:.2f} s",
        f"requests:      {len(result.ok)} ok, {sum(result.errors.values())} failed",
        f"throughput:    {result.request_rate:.2f} req/s, {result.output_token_rate:.1f} output tok/s",
        "",
        f"{'ms':<6}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    for name, s in result.latencies().items():
        cells = (s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms)
        lines.append(f"{name.upper():<6}" + "".join(f"{_ms(v):>10}" for v in cells))
    examples = result.to_dict()["error_examples"]
    for kind, n in result.errors.items():
        lines.append(f"error {kind}: {n} (first: {examples.get(kind, '')})")
    return "\n".join(lines)


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"
