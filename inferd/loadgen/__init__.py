"""Load generators: the V2 (KServe/Triton) client behind `inferd bench v2`, and shared statistics."""

from inferd.loadgen.stats import LatencySummary, Recorder, RunStats, percentile, summarize
from inferd.loadgen.v2 import V2BenchOptions, V2BenchResult, add_v2_arguments, main_v2, run_v2, run_v2_sync

__all__ = [
    "LatencySummary",
    "Recorder",
    "RunStats",
    "V2BenchOptions",
    "V2BenchResult",
    "add_v2_arguments",
    "main_v2",
    "percentile",
    "run_v2",
    "run_v2_sync",
    "summarize",
]
