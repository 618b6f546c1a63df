"""Every Prometheus metric inferd exports, in one place. One `Metrics` per server (no global state)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from inferd.metrics.request_totals import RequestTotals
from inferd.metrics.usage_totals import UsageTotals
from inferd.store.records import MICROS

# Request latencies from sub-millisecond tensor calls to long LLM generations.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics, registered on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = RequestTotals(LATENCY_BUCKETS)
        """`inferd_requests_total` and `inferd_request_duration_seconds`, exported by `_RequestCollector`."""
        r.register(_RequestCollector(self.requests))
        self.queue_duration = Histogram(
            "inferd_queue_duration_seconds",
            "Time requests waited in the batcher queue.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "inferd_compute_duration_seconds",
            "Time the runtime spent executing a batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "inferd_batch_size",
            "Rows per executed batch.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "inferd_queue_depth", "Requests waiting in the batcher queue.", ["model", "version"], registry=r
        )
        self._llm_metrics(r)
        self._governance_metrics(r)
        self.model_ready = Gauge(
            "inferd_model_ready",
            "1 when the model version is loaded and ready.",
            ["model", "version"],
            registry=r,
        )

    def _llm_metrics(self, r: CollectorRegistry) -> None:
        """The LLM engine's metrics (names as vLLM's users know them)."""
        labels = ["model", "version"]

        def hist(name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        self.time_to_first_token = hist(
            "inferd_time_to_first_token_seconds", "Time from a request's arrival to its first output token."
        )
        self.inter_token_latency = hist(
            "inferd_inter_token_latency_seconds", "Time between two output chunks of a streamed request."
        )
        self.e2e_request_latency = hist(
            "inferd_e2e_request_latency_seconds", "Time from a request's arrival to its last output token."
        )
        self.request_queue_time = hist(
            "inferd_request_queue_time_seconds",
            "Time from a request's arrival to its acceptance by the engine.",
        )
        self.num_requests_running = gauge("inferd_num_requests_running", "Requests the engine is running.")
        self.num_requests_waiting = gauge("inferd_num_requests_waiting", "Requests waiting in the engine.")
        self.kv_cache_usage = gauge("inferd_kv_cache_usage_ratio", "Share of the KV-cache blocks in use.")
        self.prefix_cache_queries = counter(
            "inferd_prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_cache_hits = counter(
            "inferd_prefix_cache_hits", "Prompt tokens found in the prefix cache."
        )
        self.preemptions = counter("inferd_preemptions", "Requests preempted for lack of KV-cache blocks.")
        self.prompt_tokens = counter("inferd_prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("inferd_generation_tokens", "Tokens generated.")

    def _governance_metrics(self, r: CollectorRegistry) -> None:
        """Spend and refusals per tenant (tenants are created by admins: bounded cardinality)."""
        self.usage = UsageTotals()
        r.register(_UsageCollector(self.usage))
        self.rejections = Counter(
            "inferd_rejections",
            "Requests refused by the gateway (reason: auth, rate_limit, concurrency, budget, workflow, "
            "access).",
            ["tenant", "reason"],
            registry=r,
        )
        self.budget_remaining = Gauge(
            "inferd_budget_remaining",
            "What is left of the tenant's tightest budget after settled usage (kind: tokens, cost, "
            "requests).",
            ["tenant", "kind"],
            registry=r,
        )

    def track_queue_depth(self, model: str, version: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(model, version).set_function(depth)

    def forget_version(self, model: str, version: str) -> None:
        """Drop per-version gauges of an unloaded version (its ready gauge goes to 0)."""
        with contextlib.suppress(KeyError):
            self.queue_depth.remove(model, version)
        self.model_ready.labels(model, version).set(0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _UsageCollector(Collector):
    """`inferd_tokens_total`, `inferd_cost_total` and `inferd_retries_total`, read from the request path's
    totals at scrape time (copied first: a scrape may run beside the event loop)."""

    def __init__(self, totals: UsageTotals) -> None:
        self.totals = totals

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        tokens, cost, retries = self._families()
        for (tenant, model), t in self.totals.models.copy().items():
            for kind, n in (
                ("prompt", t.prompt_tokens),
                ("completion", t.completion_tokens),
                ("cached", t.cached_tokens),
            ):
                if n:
                    tokens.add_metric([tenant, model, kind], n)
            if t.cost_micros:
                cost.add_metric([tenant, model], t.cost_micros / MICROS)
        for tenant, n in self.totals.retries.copy().items():
            retries.add_metric([tenant], n)
        return iter((tokens, cost, retries))

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                "inferd_tokens",
                "Tokens settled in the usage ledger (kind: prompt, completion, cached).",
                labels=["tenant", "model", "kind"],
            ),
            CounterMetricFamily(
                "inferd_cost",
                "Cost settled in the usage ledger, in the currency.",
                labels=["tenant", "model"],
            ),
            CounterMetricFamily(
                "inferd_retries",
                "Requests that declared themselves retries (Idempotency-Key seen before, or "
                "x-inferd-retry-of).",
                labels=["tenant"],
            ),
        )


class _RequestCollector(Collector):
    """`inferd_requests_total` and `inferd_request_duration_seconds`, read from the request path's totals
    at scrape time, in the form `prometheus_client`'s own counter and histogram export (with `_created`)."""

    def __init__(self, totals: RequestTotals) -> None:
        self.totals = totals
        # `le` labels spelled as prometheus_client spells its own histograms' (`1.0`, `0.0005`).
        self._bounds = [floatToGoString(b) for b in totals.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        requests, duration = self._families()
        for (model, version, protocol), s in list(self.totals.series.items()):
            for code, n in list(s.codes.items()):
                requests.add_metric([model, version, protocol, code], n, created=s.created)
            cumulative, buckets = 0, []
            for bound, n in zip(self._bounds, list(s.buckets), strict=True):
                cumulative += n
                buckets.append((bound, float(cumulative)))
            duration.add_metric([model, version, protocol], buckets, s.sum)
            labels = {"model": model, "version": version, "protocol": protocol}
            duration.samples.append(Sample(duration.name + "_created", labels, s.created))
        return iter((requests, duration))

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily(
                "inferd_requests",
                "Requests handled, by outcome code of the protocol.",
                labels=["model", "version", "protocol", "code"],
            ),
            HistogramMetricFamily(
                "inferd_request_duration_seconds",
                "Time from a request's arrival at the gateway to its response.",
                labels=["model", "version", "protocol"],
            ),
        )
