"""Percentiles, summaries and the measurement window of the load-generator statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferd.loadgen.stats import Recorder, percentile, summarize


def test_percentile_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)


def test_percentile_of_one_and_of_none() -> None:
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], q)


@given(
    st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
    st.floats(min_value=0, max_value=100),
)
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    ordered = sorted(values)
    assert percentile(ordered, q) == pytest.approx(float(np.percentile(ordered, q)), rel=1e-9, abs=1e-9)


def test_summarize_reports_milliseconds() -> None:
    s = summarize([0.003, 0.001, 0.002])
    assert s.count == 3
    assert s.min_ms == pytest.approx(1.0)
    assert s.max_ms == pytest.approx(3.0)
    assert s.mean_ms == pytest.approx(2.0)
    assert s.p50_ms == pytest.approx(2.0)
    assert s.p99_ms == pytest.approx(2.98)


def test_summarize_empty_is_nan_and_json_null() -> None:
    s = summarize([])
    assert s.count == 0
    assert math.isnan(s.p99_ms)
    assert s.to_dict()["p99_ms"] is None


def test_recorder_keeps_only_requests_sent_in_window() -> None:
    rec = Recorder(window_start=10.0, window_end=20.0)
    rec.record(9.0, 10.5)  # warm-up: sent before the window
    rec.record(10.0, 10.1, items=4)
    rec.record(19.0, 19.2, items=4)
    rec.record(20.0, 20.1)  # sent after the window closed
    rec.record(15.0, 15.5, error="http_503")
    stats = rec.stats()
    assert stats.ok == 2
    assert stats.items == 8
    assert stats.errors == {"http_503": 1}
    assert stats.error_count == 1
    assert stats.elapsed_s == pytest.approx(10.0)
    assert stats.throughput_rps == pytest.approx(0.2)
    assert stats.items_per_s == pytest.approx(0.8)
    assert stats.latency.count == 2
    assert stats.latency.mean_ms == pytest.approx(150.0)
    assert (rec.seen_ok, rec.seen_errors) == (4, 1)


def test_recorder_stretches_elapsed_to_the_last_completion() -> None:
    rec = Recorder(window_start=0.0, window_end=10.0)
    rec.record(9.0, 15.0)
    stats = rec.stats()
    assert stats.elapsed_s == pytest.approx(15.0)
    assert stats.latency.max_ms == pytest.approx(6000.0)


def test_recorder_counts_unfinished_requests_as_errors() -> None:
    rec = Recorder(window_start=0.0, window_end=1.0)
    rec.record_unfinished("unfinished", 3)
    rec.record_unfinished("unfinished", 0)
    assert rec.stats().errors == {"unfinished": 3}


def test_recorder_rejects_inverted_window() -> None:
    with pytest.raises(ValueError, match="window"):
        Recorder(window_start=2.0, window_end=1.0)


def test_run_stats_to_dict_is_complete() -> None:
    rec = Recorder(0.0, 2.0)
    rec.record(0.5, 0.6)
    d = rec.stats().to_dict()
    assert d["ok"] == 1
    assert d["errors_total"] == 0
    assert d["throughput_rps"] == pytest.approx(0.5)
    assert set(d["latency_ms"]) == {
        "count",
        "mean_ms",
        "min_ms",
        "max_ms",
        "p50_ms",
        "p90_ms",
        "p95_ms",
        "p99_ms",
    }
