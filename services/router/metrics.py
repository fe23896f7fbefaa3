"""The router's Prometheus metrics (`tandem_router_*`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from tandem.runtime.metrics import MetricsFactory, metric_name

if TYPE_CHECKING:
    from .kv_event_follower import KvEventFollower
    from .radix_index import RadixIndex

DECISION_BUCKETS = (
    10e-6, 25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.25, 1.0, 5.0,
)  # fmt: skip


class _IndexCollector(Collector):
    """Reads index sizes and event counts at scrape time (no metric call per event).

    Sums over every index bound to it (one per served model in a shared router)."""

    def __init__(self) -> None:
        self.sources: list[tuple[RadixIndex, KvEventFollower | None]] = []

    def collect(self) -> Iterator[Metric]:
        blocks = sum(index.num_blocks for index, _ in self.sources)
        applied = sum(f.num_applied for _, f in self.sources if f is not None)
        gaps = sum(f.num_gaps for _, f in self.sources if f is not None)
        yield GaugeMetricFamily(
            metric_name("router", "index_blocks"), "Distinct KV blocks in the index.", value=blocks
        )
        yield CounterMetricFamily(
            metric_name("router", "kv_events_applied"),
            "KV events applied to the index.",
            value=applied,
        )
        yield CounterMetricFamily(
            metric_name("router", "kv_gap_recoveries"),
            "Event gaps recovered with Worker.KvEventsSince.",
            value=gaps,
        )


class RouterMetrics:
    """Owns the router's metric objects in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        factory = MetricsFactory("router", registry)
        self.registry = factory.registry
        self.kv_cache_hit_ratio = factory.gauge(
            "kv_cache_hit_ratio",
            "Predicted cached prompt blocks / prompt blocks, over all routed requests.",
        )
        self.prompt_blocks = factory.counter(
            "prompt_blocks_total", "Full prompt blocks of routed requests."
        )
        self.overlap_blocks = factory.counter(
            "overlap_blocks_total", "Prompt blocks predicted cached on the chosen worker."
        )
        self.decisions = factory.counter(
            "decisions_total", "Routing decisions per worker.", ("instance_id",)
        )
        self.decision_seconds = factory.histogram(
            "decision_seconds",
            "Time spent choosing a worker (hashing, lookup, scoring).",
            buckets=DECISION_BUCKETS,
        )
        self.queue_wait_seconds = factory.histogram(
            "queue_wait_seconds", "Time requests waited because every worker was busy."
        )
        self.queued = factory.gauge(
            "queued_requests", "Requests waiting for a worker below the busy threshold."
        )
        self.rejected = factory.counter(
            "rejected_total", "Requests refused because the wait queue was full."
        )
        self._decision_children: dict[str, Counter] = {}
        self._index_collector: _IndexCollector | None = None
        self._prompt_total = 0
        self._overlap_total = 0

    def bind(self, index: RadixIndex, follower: KvEventFollower | None) -> None:
        """Export the size and event counts of `index` (summed with any bound before)."""
        if self._index_collector is None:
            self._index_collector = _IndexCollector()
            self.registry.register(self._index_collector)
        self._index_collector.sources.append((index, follower))

    def _decisions_of(self, instance_id: str) -> Counter:
        child = self._decision_children.get(instance_id)
        if child is None:
            child = self._decision_children[instance_id] = self.decisions.labels(instance_id)
        return child

    def observe_decision(
        self, instance_id: str, overlap_blocks: int, prompt_blocks: int, seconds: float
    ) -> None:
        self._decisions_of(instance_id).inc()
        self.decision_seconds.observe(seconds)
        if prompt_blocks:
            self._prompt_total += prompt_blocks
            self._overlap_total += overlap_blocks
            self.prompt_blocks.inc(prompt_blocks)
            self.overlap_blocks.inc(overlap_blocks)
            self.kv_cache_hit_ratio.set(self._overlap_total / self._prompt_total)
