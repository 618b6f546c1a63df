"""LLM serving: inferd over HTTP (OpenAI API, streaming) vs Hugging Face `transformers.generate` in process.

One command: `python benchmarks/llm_serving.py [--quick]`. The model is a random-weight Llama shaped like
SmolLM2-135M (hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, vocab 49152, tied embeddings)
in bfloat16; random weights make the cost real and the tokens meaningless, and `ignore_eos` (HF:
`min_new_tokens`) makes every request produce exactly its output length.

Baselines (in this process, before any server starts): `generate` at batch 1 and at a static batch of 32.
Served (`inferd serve` as a subprocess, the load generator `inferd.loadgen.openai` in this process):
concurrency 1, concurrency 32, and a shared-prefix case on two model folders, prefix caching on and off.
Results go to this script's section of `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- llm_serving:begin -->", "<!-- llm_serving:end -->"
VOCAB = 49152
PHYSICAL_LIMIT_TOK_S = 1500.0
SHAPE: dict[str, Any] = dict(
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    intermediate_size=1536,
    vocab_size=VOCAB,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
    rope_theta=100000.0,
    bos_token_id=1,
    eos_token_id=2,
)


@dataclass
class Plan:
    input_len: int = 128
    output_len: int = 128
    c1_requests: int = 8
    c32_requests: int = 64
    prefix_len: int = 1024
    prefix_suffix_len: int = 128
    prefix_output_len: int = 32
    prefix_requests: int = 32
    prefix_concurrency: int = 8
    hf_batch1_repeats: int = 2
    max_num_batched_tokens: int = 2048
    """The served models' step token budget."""


QUICK = Plan(c1_requests=3, c32_requests=32, prefix_output_len=8, prefix_requests=8, prefix_concurrency=4,
             hf_batch1_repeats=1)  # fmt: skip


def build_model(folder: Path) -> None:
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(folder)
    # a word-level tokenizer covering every id, so any sampled token decodes (prompts are token ids anyway)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))


def write_repository(repo: Path, weights: Path, caching: bool, max_len: int, step_tokens: int) -> str:
    name = "smollm" if caching else "smollm_nocache"
    (repo / name).mkdir(parents=True)
    (repo / name / "1").symlink_to(weights, target_is_directory=True)
    (repo / name / "config.yaml").write_text(
        "runtime: llm\ndtype: bfloat16\n"
        f"max_model_len: {max_len}\nmax_num_seqs: 32\nmax_num_batched_tokens: {step_tokens}\n"
        f"kv_cache_memory: {1_500_000_000}\nenable_prefix_caching: {'true' if caching else 'false'}\n"
    )
    return name


def hf_baselines(weights: Path, plan: Plan) -> dict[str, float]:
    """Batch 1: prefill time and time per output token; static batch 32: output tokens per second."""
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    model = LlamaForCausalLM.from_pretrained(weights, dtype=torch.bfloat16).eval()  # type: ignore[no-untyped-call]
    gen = torch.Generator().manual_seed(1)

    def run(batch: int, new: int) -> float:
        ids = torch.randint(3, VOCAB, (batch, plan.input_len), generator=gen)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                do_sample=False, pad_token_id=0,
            )  # fmt: skip
        elapsed = time.perf_counter() - t0
        assert out.shape[1] == plan.input_len + new
        return elapsed

    run(1, 4)  # warm-up
    prefill = min(run(1, 1) for _ in range(plan.hf_batch1_repeats))
    full = min(run(1, plan.output_len) for _ in range(plan.hf_batch1_repeats))
    batch32 = min(run(32, plan.output_len) for _ in range(2))  # the better of two: this machine is noisy
    return {
        "b1_ttft_ms": prefill * 1e3,
        "b1_e2e_ms": full * 1e3,
        "b1_tpot_ms": (full - prefill) / (plan.output_len - 1) * 1e3,
        "b1_tok_s": plan.output_len / full,
        "b32_e2e_ms": batch32 * 1e3,
        "b32_tok_s": 32 * plan.output_len / batch32,
    }


@contextlib.contextmanager
def server(repo: Path, state: Path) -> Iterator[str]:
    exe = ROOT / ".venv" / "bin" / "inferd"
    cmd = [
        str(exe),
        "serve",
        "--model-repository",
        str(repo),
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--no-auth",
    ]
    cmd += ["--state-dir", str(state), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            if m := re.search(r"listening http=(\d+)", line):
                url = f"http://127.0.0.1:{m.group(1)}"
                break
        if url is None:
            raise RuntimeError(f"inferd serve exited with {proc.wait()} before listening")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(url: str, model: str, **kw: Any) -> dict[str, Any]:
    from inferd.loadgen.openai import OpenAIBenchOptions, run_openai_sync

    opts = OpenAIBenchOptions(url=url, model=model, vocab_size=VOCAB, **kw)
    t0 = time.perf_counter()
    result = run_openai_sync(opts)
    doc = result.to_dict()
    doc["command"] = _command(opts)
    took, rate, ttft = time.perf_counter() - t0, doc["output_token_rate"], doc["ttft_ms"]["p50_ms"]
    print(f"  {doc['command']}: {doc['ok']} ok in {took:.1f} s, {rate:.1f} tok/s, TTFT p50 {ttft:.0f} ms")
    if doc["errors"]:
        print(f"  errors: {doc['errors']} {doc['error_examples']}", flush=True)
    return doc


def _command(o: Any) -> str:
    cmd = f"inferd bench openai --url URL --model {o.model} --input-len {o.input_len}"
    cmd += f" --output-len {o.output_len}"
    cmd += f" --concurrency {o.concurrency} --num-requests {o.num_requests} --vocab-size {o.vocab_size}"
    cmd += f" --shared-prefix-len {o.shared_prefix_len}" if o.shared_prefix_len else ""
    return cmd + (f" --temperature {o.temperature:g}" if o.temperature else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter prefix-case outputs")
    parser.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    parser.add_argument(
        "--max-num-batched-tokens", type=int, default=2048, help="the served models' step token budget"
    )
    parser.add_argument("--note", action="append", default=[], help="a paragraph to add to the results")
    args = parser.parse_args()
    plan = replace(QUICK if args.quick else Plan(), max_num_batched_tokens=args.max_num_batched_tokens)
    started, t0 = datetime.now(UTC), time.perf_counter()
    load_avg = os.getloadavg()[0]
    others = ForeignCpu()
    with tempfile.TemporaryDirectory(prefix="inferd-llm-bench-") as tmp:
        weights = Path(tmp) / "weights"
        print("building the model ...", flush=True)
        build_model(weights)
        print("HF transformers baselines ...", flush=True)
        hf = hf_baselines(weights, plan)
        print(f"  {json.dumps({k: round(v, 2) for k, v in hf.items()})}", flush=True)
        max_len = plan.prefix_len + plan.prefix_suffix_len + max(plan.prefix_output_len, plan.output_len) + 16
        repo_on, repo_off = Path(tmp) / "repo-on", Path(tmp) / "repo-off"
        on = write_repository(repo_on, weights, True, max_len, plan.max_num_batched_tokens)
        off = write_repository(repo_off, weights, False, max_len, plan.max_num_batched_tokens)
        runs: dict[str, dict[str, Any]] = {}
        shape = dict(input_len=plan.input_len, output_len=plan.output_len)
        prefix = dict(input_len=plan.prefix_len + plan.prefix_suffix_len, output_len=plan.prefix_output_len,
                      num_requests=plan.prefix_requests, concurrency=plan.prefix_concurrency,
                      shared_prefix_len=plan.prefix_len)  # fmt: skip
        print("inferd, prefix caching on ...", flush=True)
        with server(repo_on, Path(tmp) / "state-on") as url:
            runs["c1"] = load(url, on, concurrency=1, num_requests=plan.c1_requests, seed=1, **shape)
            runs["c32"] = load(
                url, on, concurrency=32, num_requests=plan.c32_requests, warmup_requests=2, seed=2, **shape
            )
            runs["c32_sampled"] = load(
                url, on, concurrency=32, num_requests=plan.c32_requests, seed=4, temperature=1.0, **shape
            )
            runs["prefix_on"] = load(url, on, seed=3, **prefix)
        print("inferd, prefix caching off ...", flush=True)
        with server(repo_off, Path(tmp) / "state-off") as url:
            runs["prefix_off"] = load(url, off, seed=3, **prefix)
    wall = time.perf_counter() - t0
    section = report(plan, args.quick, hf, runs, started, wall, load_avg, others.seconds(), args.note)
    print(section)
    if not args.no_write:
        update_results(section)
    return 0


def report(
    plan: Plan, quick: bool, hf: dict[str, float], runs: dict[str, dict[str, Any]], started: datetime,
    wall: float, load_avg: float, foreign_cpu_s: float, notes: list[str],
) -> str:  # fmt: skip
    import torch
    import transformers

    c1, c32, pon, poff = runs["c1"], runs["c32"], runs["prefix_on"], runs["prefix_off"]
    c32_rate, hf32 = c32["output_token_rate"], hf["b32_tok_s"]
    ttft_on, ttft_off = pon["ttft_ms"]["p50_ms"], poff["ttft_ms"]["p50_ms"]
    ratios = [
        ("c=32 output tok/s vs HF static batch 32", c32_rate / hf32, "≥ 3.5", ">=", 3.5),
        ("c=1 TPOT p50 vs HF batch 1", c1["tpot_ms"]["p50_ms"] / hf["b1_tpot_ms"], "≤ 0.7", "<=", 0.7),
        ("c=32 TTFT p99 (s)", c32["ttft_ms"]["p99_ms"] / 1e3, "≤ 2.5 s", "<=", 2.5),
        ("shared-prefix TTFT p50, caching on / off", ttft_on / ttft_off, "≤ 0.25", "<=", 0.25),
        ("c=32 output tok/s / 1,500 (physical limit)", c32_rate / PHYSICAL_LIMIT_TOK_S, "-", "", 0.0),
    ]
    cmd = "python benchmarks/llm_serving.py" + (" --quick" if quick else "")
    lines = [
        BEGIN,
        "## LLM serving: inferd (OpenAI API, streaming) vs Hugging Face transformers `generate`",
        "",
        f"Command: `{cmd}`, {started:%Y-%m-%d %H:%M} UTC, wall time {wall:.0f} s.",
        "",
        f"Machine: {os.cpu_count()} CPUs ({_cpu_name()}), shared by the "
        f"client and the server (1-minute load average before the run: {load_avg:.2f}; processes outside "
        f"this benchmark used {foreign_cpu_s:.0f} CPU-seconds during its {wall:.0f} s, "
        f"{foreign_cpu_s / wall * 100:.0f}% of one core). "
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}.",
        "",
        "Model: random-weight Llama shaped like SmolLM2-135M (hidden 576, 30 layers, 9 heads / 3 KV heads, "
        "intermediate 1536, vocab 49152, tied embeddings), bfloat16. Prompts are random token ids; every "
        "request generates exactly its output length (`ignore_eos`; HF: `min_new_tokens`), greedy. inferd: "
        f"`max_num_seqs` 32, `max_num_batched_tokens` {plan.max_num_batched_tokens}, one server process; "
        "the load generator (`inferd bench openai`, closed loop) runs in the benchmark process. HF "
        "baselines run in process, alone, the better of two runs at batch 32; each served case is one run.",
        "",
        "### Hugging Face transformers baselines",
        "",
        "| case | prompt / output tokens | TTFT ms | TPOT ms | e2e ms | output tok/s |",
        "|---|---|---:|---:|---:|---:|",
        f"| batch 1 | {plan.input_len} / {plan.output_len} | {hf['b1_ttft_ms']:.1f} | "
        f"{hf['b1_tpot_ms']:.2f} | {hf['b1_e2e_ms']:.0f} | {hf['b1_tok_s']:.1f} |",
        f"| static batch 32 | {plan.input_len} / {plan.output_len} | - | - | {hf['b32_e2e_ms']:.0f} | "
        f"{hf['b32_tok_s']:.1f} |",
        "",
        "### inferd served",
        "",
        "| case | c | requests | in / out (shared) | req/s | out tok/s | TTFT p50 / p90 / p99 ms | "
        "TPOT p50 / p99 ms | ITL p50 / p99 ms | e2e p50 / p99 ms | cached tokens | errors |",
        "|---|---:|---:|---|---:|---:|---|---|---|---|---:|---:|",
    ]
    sampled = runs["c32_sampled"]
    cases = [("c=1", c1), ("c=32", c32), ("c=32, temperature 1", sampled), ("prefix, caching on", pon),
             ("prefix, caching off", poff)]  # fmt: skip
    for name, r in cases:
        t, p, i, e = r["ttft_ms"], r["tpot_ms"], r["itl_ms"], r["e2e_ms"]
        shared = f" ({r['shared_prefix_len']})" if r["shared_prefix_len"] else ""
        lines.append(
            f"| {name} | {r['concurrency']} | {r['ok']} | {r['input_len']} / {r['output_len']}{shared} | "
            f"{r['request_rate']:.2f} | {r['output_token_rate']:.1f} | "
            f"{_f(t['p50_ms'])} / {_f(t['p90_ms'])} / {_f(t['p99_ms'])} | "
            f"{_f(p['p50_ms'])} / {_f(p['p99_ms'])} | {_f(i['p50_ms'])} / {_f(i['p99_ms'])} | "
            f"{_f(e['p50_ms'])} / {_f(e['p99_ms'])} | {r['cached_tokens']} | {sum(r['errors'].values())} |"
        )
    lines += ["", "Load commands (URL = the server's HTTP address):", ""]
    lines += [f"- `{r['command']}`" for _, r in cases]
    lines += ["", "### Against the targets", "", "| measure | value | target | met |", "|---|---:|---|---|"]
    for label, value, target, op, bound in ratios:
        met = "-" if not op else ("yes" if (value >= bound if op == ">=" else value <= bound) else "no")
        lines.append(f"| {label} | {value:.2f} | {target} | {met} |")
    if quick:
        lines += ["", "`--quick`: fewer requests and shorter outputs in the prefix case than the full run."]
    for note in notes:
        lines += ["", note]
    lines.append(END)
    return "\n".join(lines)


class ForeignCpu:
    """CPU time used by processes outside this benchmark's process tree while it runs (Linux /proc, sampled
    every second by a thread): other work on a 2-core machine moves every number here, so the report says
    how much there was."""

    def __init__(self, period_s: float = 1.0) -> None:
        self._total = 0
        self._last = self._ticks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True)
        self._thread.start()

    def seconds(self) -> float:
        """Stop sampling; the foreign CPU-seconds since construction."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return self._total / os.sysconf("SC_CLK_TCK")

    def _run(self, period_s: float) -> None:
        while not self._stop.wait(period_s):
            self._sample()

    def _sample(self) -> None:
        now = self._ticks()
        mine, grew = {os.getpid()}, True
        while grew:
            new = {pid for pid, (ppid, _) in now.items() if ppid in mine} - mine
            mine |= new
            grew = bool(new)
        for pid, (_, ticks) in now.items():
            if pid not in mine:
                self._total += max(0, ticks - self._last.get(pid, (0, 0))[1])
        self._last = now

    @staticmethod
    def _ticks() -> dict[int, tuple[int, int]]:
        """pid -> (parent pid, user + system ticks)."""
        out: dict[int, tuple[int, int]] = {}
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    out[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        return out


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def update_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
