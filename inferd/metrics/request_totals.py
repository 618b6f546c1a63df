"""Requests per outcome and their durations, counted on the request path and exported when /metrics is
scraped: `inferd_requests_total` and the `inferd_request_duration_seconds` histogram.

Every call through the gateway is counted, on the event loop. Two `prometheus_client` children there (a
labelled-child lookup, a lock and interpreted code per `inc` and per `observe`, the histogram scanning its
buckets in Python) cost about 44k instructions per request, in every mode (measured with callgrind); these
are plain counters, read into the two families by a collector at scrape time (`registry.py`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final


class RequestSeries:
    """One (model, version, protocol): requests per outcome code and a histogram of their durations (native
    integers and floats when compiled)."""

    def __init__(self, bounds: tuple[float, ...], created: float) -> None:
        self.bounds: Final = bounds
        self.created: Final = created
        """When the series was first counted (the families' `_created` samples)."""
        self.codes: dict[str, int] = {}
        self.buckets: list[int] = [0] * (len(bounds) + 1)
        """Observations per bucket, not cumulative: index i holds those in (bounds[i-1], bounds[i]], the
        last those above every bound."""
        self.sum = 0.0

    def observe(self, code: str, seconds: float) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        bounds = self.bounds
        i = 0
        n = len(bounds)
        while i < n and seconds > bounds[i]:
            i += 1
        self.buckets[i] += 1
        self.sum += seconds


class RequestTotals:
    """Every series since the server started (counters and a histogram: they never decrease)."""

    def __init__(self, bounds: tuple[float, ...], clock: Callable[[], float] = time.time) -> None:
        self.bounds: Final = bounds
        self.clock: Final = clock
        """The wall clock, read when a series first appears (its `_created`)."""
        self.series: dict[tuple[str, str, str], RequestSeries] = {}
        """(model, version, protocol) -> its counts."""

    def add(self, model: str, version: str, protocol: str, code: str, seconds: float) -> None:
        """Count one finished call that took `seconds`."""
        key = (model, version, protocol)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = RequestSeries(self.bounds, self.clock())
        series.observe(code, seconds)
