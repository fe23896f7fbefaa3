"""Prometheus metrics of a worker: request counters and latencies, engine state read at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from tandem.runtime.metrics import MetricsFactory, metric_name

from .engine import EngineStats

COMPONENT = "worker"


class EngineStatsCollector(Collector):
    """Reads `EngineStats` when scraped: never stale, and free between scrapes."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(metric_name(COMPONENT, name), doc, value=value)

        yield gauge("kv_total_blocks", "KV cache blocks in the pool.", s.total_blocks)
        yield gauge(
            "kv_active_blocks",
            "KV blocks referenced by running or waiting requests.",
            s.active_blocks,
        )
        yield gauge(
            "kv_cached_blocks", "Unreferenced KV blocks kept for prefix reuse.", s.cached_blocks
        )
        yield gauge("kv_usage_ratio", "Active KV blocks / total blocks.", s.kv_usage)
        yield gauge(
            "prefix_cache_hit_ratio",
            "Prompt tokens served from the prefix cache since start.",
            s.prefix_cache_hit_rate,
        )
        yield gauge("running_requests", "Requests in the running batch.", s.num_running)
        yield gauge(
            "waiting_requests", "Requests queued for admission (queue depth).", s.num_waiting
        )
        yield gauge(
            "pending_prefill_tokens",
            "Prompt tokens admitted or queued but not yet prefilled.",
            s.pending_prefill_tokens,
        )
        yield gauge(
            "prefill_step_seconds",
            "Recent average duration of a step that prefills.",
            s.prefill_step_seconds_avg,
        )
        yield gauge(
            "decode_step_seconds",
            "Recent average duration of a decode-only step.",
            s.decode_step_seconds_avg,
        )
        yield CounterMetricFamily(
            metric_name(COMPONENT, "preemptions"),
            "Requests preempted because KV blocks ran out.",
            value=s.num_preemptions,
        )


class WorkerMetrics:
    """Owns the worker's registry and the metrics the gRPC service updates."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self.registry = CollectorRegistry()
        factory = MetricsFactory(COMPONENT, self.registry)
        self.requests = factory.counter(
            "requests_total", "Generate requests by outcome.", ("finish_reason",)
        )
        self.prompt_tokens = factory.counter(
            "prompt_tokens_total", "Prompt tokens of finished requests."
        )
        self.cached_tokens = factory.counter(
            "cached_prompt_tokens_total", "Prompt tokens served from the prefix cache."
        )
        # Counted per output on the hot path: a plain int read at scrape, not a locked Counter.
        self.num_generated_tokens = 0
        self.prefill_latency = factory.histogram(
            "prefill_latency_seconds", "Request arrival to its first token (queueing + prefill)."
        )
        self.request_latency = factory.histogram(
            "request_latency_seconds", "Request arrival to its end."
        )
        self.in_flight = factory.gauge("in_flight_requests", "Requests being generated now.")
        self.registry.register(EngineStatsCollector(stats))
        self.registry.register(_GeneratedTokensCollector(self))


class _GeneratedTokensCollector(Collector):
    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            metric_name(COMPONENT, "generated_tokens"),
            "Tokens generated.",
            value=self._metrics.num_generated_tokens,
        )
