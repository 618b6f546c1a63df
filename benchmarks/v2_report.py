"""Tables, ratios against targets, and the `benchmarks/RESULTS.md` section of `v2_serving.py`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TOP_C = 64
DISTURBED_CORES = 0.25
"""Other work above this many cores during a point makes its numbers suspect."""


@dataclass
class Outcome:
    """One measured point: `result` is `V2BenchResult.to_dict()`, or None with `error` when it failed."""

    server: str
    model: str
    protocol: str
    batching: bool
    concurrency: int
    result: dict[str, Any] | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def rps(self) -> float:
        return float(self.result["throughput_rps"]) if self.result else math.nan

    @property
    def rows_per_s(self) -> float:
        return float(self.result["items_per_s"]) if self.result else math.nan

    def cores(self, who: str) -> float:
        """Average cores used during the point by `server`, `client` (the load generator) or `other`."""
        if not self.result or "cpu_cores" not in self.result:
            return math.nan
        return float(self.result["cpu_cores"][who])

    def batch(self, key: str) -> float:
        """inferd's own batch statistics over the point (from its /metrics), NaN for other servers."""
        batches = self.result.get("server_batches") if self.result else None
        return float(batches[key]) if batches else math.nan

    def latency(self, key: str) -> float:
        if not self.result or self.result["latency_ms"][key] is None:
            return math.nan
        return float(self.result["latency_ms"][key])


def _find(
    outcomes: list[Outcome], server: str, model: str, protocol: str, batching: bool, c: int = TOP_C
) -> Outcome | None:
    for o in outcomes:
        key = (o.server, o.model, o.protocol, o.batching, o.concurrency)
        if key == (server, model, protocol, batching, c) and o.result is not None:
            return o
    return None


def _f(v: float, digits: int = 1) -> str:
    return "-" if math.isnan(v) else f"{v:,.{digits}f}"


def _verdict(r: Ratio) -> str:
    if r.passed is None:
        return "n/a"
    verdict = "**pass**" if r.passed else "**FAIL**"
    return verdict + (" (disturbed: other work ran)" if r.disturbed else "")


def _errors(o: Outcome) -> str:
    if o.result is None:
        return "run failed: " + (o.error or "").splitlines()[0][:80]
    errors: dict[str, int] = o.result["errors"]
    return ", ".join(f"{k} {v}" for k, v in errors.items()) or "0"


@dataclass(frozen=True)
class Ratio:
    check: str
    measured: str
    target: str
    passed: bool | None
    """None for a ratio reported for information only."""
    disturbed: bool
    """A point it rests on ran while other work used the machine."""


def _disturbed(*points: Outcome) -> bool:
    return any(p.cores("other") > DISTURBED_CORES for p in points)


def ratio_rows(baselines: dict[str, dict[str, float]], outcomes: list[Outcome]) -> list[Ratio]:
    """Every ratio the benchmark reports, with its target."""
    rows: list[Ratio] = []
    for model in baselines:
        for protocol, target in (("http-json", True), ("grpc", False)):
            ours = _find(outcomes, "inferd", model, protocol, True)
            theirs = _find(outcomes, "MLServer", model, protocol, True)
            if ours is None or theirs is None:
                continue
            ratio = ours.rps / theirs.rps if theirs.rps > 0 else math.inf
            p99_ours, p99_theirs = ours.latency("p99_ms"), theirs.latency("p99_ms")
            rows.append(
                Ratio(
                    f"{model}: inferd / MLServer at c={TOP_C}, {protocol}",
                    f"{_f(ratio, 2)}x req/s; p99 {_f(p99_ours, 2)} vs {_f(p99_theirs, 2)} ms",
                    ">= 2x req/s, lower p99" if target else "(info)",
                    (ratio >= 2.0 and p99_ours < p99_theirs) if target else None,
                    _disturbed(ours, theirs),
                )
            )
    for model in baselines:
        for protocol in ("http-binary", "grpc"):
            on = _find(outcomes, "inferd", model, protocol, True)
            off = _find(outcomes, "inferd", model, protocol, False)
            if on is None or off is None:
                continue
            ratio = on.rps / off.rps if off.rps > 0 else math.inf
            rows.append(
                Ratio(
                    f"{model}: batching on / off at c={TOP_C}, {protocol}",
                    f"{_f(ratio, 2)}x ({_f(on.rps)} vs {_f(off.rps)} req/s)",
                    ">= 3x",
                    ratio >= 3.0,
                    _disturbed(on, off),
                )
            )
    for model, base in baselines.items():
        best = [o for p in ("http-binary", "grpc") if (o := _find(outcomes, "inferd", model, p, True))]
        if not best:
            continue
        top = max(best, key=lambda o: o.rows_per_s)
        fraction = top.rows_per_s / base["rows_per_s"]
        rows.append(
            Ratio(
                f"{model}: inferd / in-process ORT rows/s (best of REST binary, gRPC at c={TOP_C})",
                f"{fraction:.0%} ({_f(top.rows_per_s)} vs {_f(base['rows_per_s'])}, {top.protocol})",
                ">= 70%" if model == "heavy" else "(info)",
                fraction >= 0.70 if model == "heavy" else None,
                _disturbed(top) or base.get("other_cores", 0.0) > DISTURBED_CORES,
            )
        )
    return rows


def render_report(
    env: dict[str, str],
    baselines: dict[str, dict[str, float]],
    flops: dict[str, float],
    outcomes: list[Outcome],
    ort_batch: int,
) -> str:
    """The markdown section: setup, in-process ceiling, per-point table, ratios."""
    out = [
        "## V2 serving: inferd vs in-process ONNX Runtime vs MLServer",
        "",
        f"Command: `{env['command']}` (also `make bench`), {env['date']}, wall time {env['wall']}.",
        "",
        f"Machine: {env['cpus']} CPUs ({env['cpu']}), shared by the client and the server under test "
        f"(1-minute load average before the run: {env['load']}). "
        f"Python {env['python']}, ONNX Runtime {env['onnxruntime']} ({env['threads']} intra-op threads "
        f"everywhere), MLServer {env['mlserver']}.",
        "",
        f"Method: closed loop, one row per request, {env['duration']}; the client (`inferd.loadgen`) runs in "
        "the benchmark process, each server in its own. inferd: dynamic batching up to 32 rows (queue delay "
        "1 ms light, 2 ms heavy) or none (`*_nobatch`: each request runs alone), one instance. MLServer: a "
        "custom ONNX Runtime `MLModel`, adaptive batching (max 32 rows, 2 ms), one inference worker, debug "
        "off. MLServer has no REST binary tensor extension, so the REST comparison uses JSON for both.",
        "",
        f"### In-process ONNX Runtime at batch {ort_batch} (the ceiling)",
        "",
        "| model | MFLOP/row | rows/s, threads spinning | rows/s, not spinning | best ms/batch | other CPU |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model, base in baselines.items():
        ms, other = _f(base["ms_per_batch"], 2), _f(base.get("other_cores", math.nan), 2)
        spin, nospin = _f(base["spin_rows_per_s"], 0), _f(base["nospin_rows_per_s"], 0)
        out.append(f"| {model} | {flops[model] / 1e6:.1f} | {spin} | {nospin} | {ms} | {other} |")
    out += [
        "",
        "Measured before and after the servers (the best counts); the ratios below use the better of the two "
        "spinning settings.",
    ]
    out += [
        "",
        "### Served",
        "",
        "| model | server | protocol | batching | c | req/s | p50 ms | p90 ms | p99 ms | errors "
        "| rows/batch | compute ms/batch | CPU server / client / other |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for o in sorted(outcomes, key=lambda o: (o.model, o.server != "inferd", o.protocol, not o.batching)):
        out.append(
            f"| {o.model} | {o.server} | {o.protocol} | {'on' if o.batching else 'off'} | {o.concurrency} "
            f"| {_f(o.rps)} | {_f(o.latency('p50_ms'), 2)} | {_f(o.latency('p90_ms'), 2)} "
            f"| {_f(o.latency('p99_ms'), 2)} | {_errors(o)} "
            f"| {_f(o.batch('rows_per_batch'))} | {_f(o.batch('compute_ms_per_batch'), 2)} "
            f"| {' / '.join(_f(o.cores(w), 2) for w in ('server', 'client', 'other'))} |"
        )
    disturbed = [o for o in outcomes if o.cores("other") > DISTURBED_CORES]
    out += [
        "",
        "rows/batch, compute ms/batch: inferd's batch histograms (its /metrics) over the point, warm-up "
        "included. CPU columns: average cores used during the point by the server (its whole process group), "
        "the load generator, and everything else on the machine. "
        + (
            f"{len(disturbed)} of {len(outcomes)} points ran while other work used more than "
            f"{DISTURBED_CORES} cores: their numbers are low."
            if disturbed
            else "No point was disturbed by other work."
        ),
    ]
    out += ["", "### Ratios against the baselines of this run", "", "| check | measured | target | result |"]
    out.append("|---|---|---|---|")
    for r in ratio_rows(baselines, outcomes):
        out.append(f"| {r.check} | {r.measured} | {r.target} | {_verdict(r)} |")
    return "\n".join(out) + "\n"


def update_results_file(section: str, path: Path = RESULTS, name: str = "v2_serving") -> None:
    """Replace the marked section `name` of RESULTS.md (append it when absent), keeping the rest."""
    begin, end_marker = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{section.rstrip()}\n{end_marker}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start, end = text.find(begin), text.find(end_marker)
    if start != -1 and end > start:
        text = text[:start] + block + text[end + len(end_marker) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
