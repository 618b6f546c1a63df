"""`inferd_requests_total` and `inferd_request_duration_seconds` come from plain counters read at scrape
time; what /metrics shows must be what prometheus_client's own counter and histogram would show."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from inferd.metrics.registry import LATENCY_BUCKETS, Metrics

CALLS = [
    ("m", "1", "http", "200", 0.0004),
    ("m", "1", "http", "200", 0.0005),  # on a bound: counted in that bucket (`le`)
    ("m", "1", "http", "500", 0.003),
    ("m", "1", "grpc", "OK", 0.02),
    ("m", "2", "http", "200", 7.5),
    ("m", "2", "http", "200", 120.0),  # above every bound: only in +Inf
    ("_unknown", "", "openai", "404", 0.0001),
]


def _ours() -> str:
    metrics = Metrics(CollectorRegistry(auto_describe=True))
    for model, version, protocol, code, seconds in CALLS:
        metrics.requests.add(model, version, protocol, code, seconds)
    return metrics.render().decode()


def _prometheus_clients() -> str:
    registry = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "inferd_requests",
        "Requests handled, by outcome code of the protocol.",
        ["model", "version", "protocol", "code"],
        registry=registry,
    )
    duration = Histogram(
        "inferd_request_duration_seconds",
        "Time from a request's arrival at the gateway to its response.",
        ["model", "version", "protocol"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for model, version, protocol, code, seconds in CALLS:
        requests.labels(model, version, protocol, code).inc()
        duration.labels(model, version, protocol).observe(seconds)
    return generate_latest(registry).decode()


def _family(text: str, name: str) -> list[str]:
    """The family's lines, sorted, with `_created` values blanked (wall-clock times of either run)."""
    lines = [line for line in text.splitlines() if re.match(rf"(# (HELP|TYPE) )?{name}[_{{ ]", line)]
    return sorted(re.sub(r"(_created\{.*\}) \S+$", r"\1 T", line) for line in lines)


def test_exported_as_prometheus_client_would() -> None:
    ours, theirs = _ours(), _prometheus_clients()
    for name in ("inferd_requests", "inferd_request_duration_seconds"):
        assert _family(ours, name) == _family(theirs, name)
        assert _family(ours, name)  # the family is there
    bucket = 'inferd_request_duration_seconds_bucket{le="0.0005",model="m",protocol="http",version="1"}'
    assert f"{bucket} 2.0" in ours
    assert 'inferd_requests_total{code="500",model="m",protocol="http",version="1"} 1.0' in ours


def test_a_series_appears_when_first_counted() -> None:
    metrics = Metrics(CollectorRegistry(auto_describe=True))
    assert "inferd_requests_total{" not in metrics.render().decode()
    metrics.requests.add("m", "1", "http", "200", 0.01)
    text = metrics.render().decode()
    assert 'inferd_request_duration_seconds_count{model="m",protocol="http",version="1"} 1.0' in text
