"""The frontend's Prometheus metrics (prefix `tandem_frontend_`; every name in docs/metrics.md)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from tandem.runtime.metrics import MetricsFactory

_TOKEN_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
# Inter-token gaps are milliseconds; the default latency buckets start at 1 ms.
_ITL_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """One model's metric children, bound once: `labels()` costs a lock and a dict lookup."""

    inflight: Gauge
    ttft: Histogram
    itl: Histogram
    request_duration: Histogram
    input_tokens: Histogram
    output_tokens: Histogram
    cached_tokens: Counter
    migrations: Counter
    disconnects: Counter


class FrontendMetrics:
    """Owns the frontend's metric objects in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        factory = MetricsFactory("frontend", registry)
        self.registry = factory.registry
        self.requests = factory.counter(
            "requests_total",
            "HTTP requests by endpoint, model and outcome.",
            ("endpoint", "model", "status"),
        )
        self.inflight = factory.gauge(
            "inflight_requests", "Requests being generated now.", ("model",)
        )
        self.ttft = factory.histogram(
            "time_to_first_token_seconds", "Request arrival to first generated token.", ("model",)
        )
        self.itl = factory.histogram(
            "inter_token_latency_seconds",
            "Gap between deliveries of a request's output tokens, per token delivered.",
            ("model",),
            buckets=_ITL_BUCKETS,
        )
        self.request_duration = factory.histogram(
            "request_duration_seconds", "Request arrival to last token.", ("model",)
        )
        self.input_tokens = factory.histogram(
            "input_sequence_tokens", "Prompt length in tokens.", ("model",), buckets=_TOKEN_BUCKETS
        )
        self.output_tokens = factory.histogram(
            "output_sequence_tokens",
            "Generated tokens per request.",
            ("model",),
            buckets=_TOKEN_BUCKETS,
        )
        self.cached_tokens = factory.counter(
            "cached_tokens_total", "Prompt tokens served from workers' prefix caches.", ("model",)
        )
        self.migrations = factory.counter(
            "migrations_total",
            "Requests moved to another worker after a worker failed.",
            ("model",),
        )
        self.disconnects = factory.counter(
            "client_disconnects_total",
            "Streams cancelled because the client went away.",
            ("model",),
        )
        self.rejected = factory.counter(
            "rejected_requests_total",
            "API requests refused before they were read, by reason.",
            ("reason",),
        )
        self._models: dict[str, ModelMetrics] = {}
        self._requests: dict[tuple[str, str, str], Counter] = {}

    def model(self, name: str) -> ModelMetrics:
        """The metric children labelled with model `name` (bound on first use)."""
        bound = self._models.get(name)
        if bound is None:
            bound = self._models[name] = ModelMetrics(
                inflight=self.inflight.labels(name),
                ttft=self.ttft.labels(name),
                itl=self.itl.labels(name),
                request_duration=self.request_duration.labels(name),
                input_tokens=self.input_tokens.labels(name),
                output_tokens=self.output_tokens.labels(name),
                cached_tokens=self.cached_tokens.labels(name),
                migrations=self.migrations.labels(name),
                disconnects=self.disconnects.labels(name),
            )
        return bound

    def count_request(self, endpoint: str, model: str, status: str) -> None:
        """One finished HTTP request (`requests_total`)."""
        key = (endpoint, model, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(endpoint, model, status)
        child.inc()
