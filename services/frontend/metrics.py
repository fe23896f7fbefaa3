"""The frontend's Prometheus metrics (`tandem_frontend_*`), declared for docs/metrics.md."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from tandem.runtime.metrics import MetricGroup

_TOKEN_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
# Inter-token gaps are milliseconds; the default latency buckets start at 1 ms.
_ITL_BUCKETS = (
    0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

FRONTEND = MetricGroup(
    "frontend",
    "Frontend",
    notes="A frontend that routes in-process (no `--router-url`) also exports the Router "
    "section's metrics from the same `/metrics`, one series per model.",
)
REQUESTS = FRONTEND.counter(
    "requests_total",
    "Generation requests by endpoint, model and outcome.",
    ("endpoint", "model", "status"),
    detail="`endpoint` is `chat`, `completions`, `kserve_infer` or `kserve_stream_infer` (the "
    'KServe gRPC API); `model` is `""` before the model is known; '
    "`status` is `success`, `cancelled` (client went away), the HTTP status of a "
    "client-visible error (`400`, `503`, ...), or `error` (an unexpected failure).",
)
INFLIGHT = FRONTEND.gauge("inflight_requests", "Requests being generated now.", ("model",))
TTFT = FRONTEND.histogram(
    "time_to_first_token_seconds", "Request arrival to the first generated token.", ("model",)
)
ITL = FRONTEND.histogram(
    "inter_token_latency_seconds",
    "Gap between deliveries of a request's output tokens, divided by the tokens delivered.",
    ("model",),
    buckets=_ITL_BUCKETS,
    detail="A migration's stall counts as the client saw it.",
)
REQUEST_DURATION = FRONTEND.histogram(
    "request_duration_seconds", "Request arrival to its last token.", ("model",)
)
INPUT_TOKENS = FRONTEND.histogram(
    "input_sequence_tokens", "Prompt length in tokens.", ("model",), buckets=_TOKEN_BUCKETS
)
OUTPUT_TOKENS = FRONTEND.histogram(
    "output_sequence_tokens", "Generated tokens per request.", ("model",), buckets=_TOKEN_BUCKETS
)
CACHED_TOKENS = FRONTEND.counter(
    "cached_tokens_total", "Prompt tokens the workers served from their prefix caches.", ("model",)
)
MIGRATIONS = FRONTEND.counter(
    "migrations_total", "Requests moved to another worker after their worker failed.", ("model",)
)
DISCONNECTS = FRONTEND.counter(
    "client_disconnects_total", "Streams cancelled because the client went away.", ("model",)
)
REJECTED = FRONTEND.counter(
    "rejected_requests_total",
    "API requests refused before they were read, by reason.",
    ("reason",),
    detail="`reason` is `unauthorized` (no or a wrong API key: 401, `--api-key`) or "
    "`overloaded` (`--max-concurrent-requests` already in flight: 503). "
    "Not counted in `requests_total`.",
)
DISAGG_DECISIONS = FRONTEND.counter(
    "disagg_decisions_total",
    "Requests routed to a decode worker, by where their prompt was sent to be prefilled.",
    ("model", "decision", "reason"),
    detail="`decision` is `remote` (a prefill worker) or `local` (the decode worker); "
    "`reason`: `long_prompt` (remote: uncached tokens over `max_local_prefill_length`), "
    "`short_prompt` (the prompt is within it), `prefix_cached` (long, but its uncached part "
    "on the decode worker is within it), `queue_full` (the prefill queue holds "
    "`max_prefill_queue_size` jobs or more), `no_prefill_worker`, `prefill_busy`. Requests "
    "to aggregated workers make no decision and are not counted.",
)
PREFILL_QUEUE_DEPTH = FRONTEND.gauge(
    "prefill_queue_depth",
    "Prefill jobs of the model in the JetStream queue (queued and running), as last read.",
    ("model",),
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
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = REQUESTS.create(r)
        self.inflight = INFLIGHT.create(r)
        self.ttft = TTFT.create(r)
        self.itl = ITL.create(r)
        self.request_duration = REQUEST_DURATION.create(r)
        self.input_tokens = INPUT_TOKENS.create(r)
        self.output_tokens = OUTPUT_TOKENS.create(r)
        self.cached_tokens = CACHED_TOKENS.create(r)
        self.migrations = MIGRATIONS.create(r)
        self.disconnects = DISCONNECTS.create(r)
        self.rejected = REJECTED.create(r)
        self.disagg_decisions = DISAGG_DECISIONS.create(r)
        self.prefill_queue_depth = PREFILL_QUEUE_DEPTH.create(r)
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
