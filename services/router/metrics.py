"""The router's Prometheus metrics (`tandem_router_*`), declared for docs/metrics.md.

One `RouterMetrics` per process owns the metric families; each model's router
reports through its own `ModelRouterMetrics` (`for_model`), so every series
carries the `model` it routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from tandem.runtime.metrics import MetricGroup

if TYPE_CHECKING:
    from .kv_event_follower import KvEventFollower
    from .radix_index import RadixIndex

DECISION_BUCKETS = (
    10e-6, 25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.25, 1.0, 5.0,
)  # fmt: skip

ROUTER = MetricGroup(
    "router",
    "Router",
    intro="Exported by the standalone router (`tandem router --metrics-port`) and by a frontend "
    'that routes in-process; `model` is the model routed (`""` for a router of every model).',
    notes="The last three exist once a KV-aware router has started (`--router-mode kv`).",
)
KV_CACHE_HIT_RATIO = ROUTER.gauge(
    "kv_cache_hit_ratio",
    "Predicted cached prompt blocks / prompt blocks, over all requests routed since start.",
    ("model",),
)
PROMPT_BLOCKS = ROUTER.counter(
    "prompt_blocks_total", "Full prompt blocks of routed requests.", ("model",)
)
OVERLAP_BLOCKS = ROUTER.counter(
    "overlap_blocks_total", "Prompt blocks predicted cached on the chosen worker.", ("model",)
)
DECISIONS = ROUTER.counter(
    "decisions_total", "Routing decisions per chosen worker.", ("model", "worker")
)
DECISION_SECONDS = ROUTER.histogram(
    "decision_seconds",
    "Time spent choosing a worker: hashing, index lookup, scoring.",
    ("model",),
    buckets=DECISION_BUCKETS,
)
QUEUE_WAIT_SECONDS = ROUTER.histogram(
    "queue_wait_seconds",
    "Time requests waited because every worker was above the busy threshold.",
    ("model",),
)
QUEUED_REQUESTS = ROUTER.gauge(
    "queued_requests", "Requests waiting now for a worker below the busy threshold.", ("model",)
)
REJECTED = ROUTER.counter(
    "rejected_total", "Requests refused (503) because the wait queue was full.", ("model",)
)
INDEX_BLOCKS = ROUTER.gauge(
    "index_blocks", "Distinct KV blocks in the radix index (read at scrape).", ("model",)
)
KV_EVENTS_APPLIED = ROUTER.counter(
    "kv_events_applied_total", "KV events applied to the index (read at scrape).", ("model",)
)
KV_GAP_RECOVERIES = ROUTER.counter(
    "kv_gap_recoveries_total",
    "KV event gaps recovered with `Worker.KvEventsSince` (read at scrape).",
    ("model",),
)


class _IndexCollector(Collector):
    """Reads index sizes and event counts at scrape time (no metric call per event)."""

    def __init__(self) -> None:
        self.sources: list[tuple[str, RadixIndex, KvEventFollower | None]] = []

    def collect(self) -> Iterator[Metric]:
        blocks = INDEX_BLOCKS.family()
        applied = KV_EVENTS_APPLIED.family()
        gaps = KV_GAP_RECOVERIES.family()
        totals: dict[str, list[int]] = {}
        for model, index, follower in self.sources:
            total = totals.setdefault(model, [0, 0, 0])
            total[0] += index.num_blocks
            if follower is not None:
                total[1] += follower.num_applied
                total[2] += follower.num_gaps
        for model, (num_blocks, num_applied, num_gaps) in totals.items():
            blocks.add_metric([model], num_blocks)
            applied.add_metric([model], num_applied)
            gaps.add_metric([model], num_gaps)
        yield from (blocks, applied, gaps)


class RouterMetrics:
    """Owns the router's metric families in one registry, shared by every model's router."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.kv_cache_hit_ratio = KV_CACHE_HIT_RATIO.create(r)
        self.prompt_blocks = PROMPT_BLOCKS.create(r)
        self.overlap_blocks = OVERLAP_BLOCKS.create(r)
        self.decisions = DECISIONS.create(r)
        self.decision_seconds = DECISION_SECONDS.create(r)
        self.queue_wait_seconds = QUEUE_WAIT_SECONDS.create(r)
        self.queued = QUEUED_REQUESTS.create(r)
        self.rejected = REJECTED.create(r)
        self._index_collector: _IndexCollector | None = None
        self._models: dict[str, ModelRouterMetrics] = {}

    def for_model(self, model: str) -> ModelRouterMetrics:
        """What the router of `model` reports through (one per model, made on first use)."""
        bound = self._models.get(model)
        if bound is None:
            bound = self._models[model] = ModelRouterMetrics(self, model)
        return bound

    def bind(self, model: str, index: RadixIndex, follower: KvEventFollower | None) -> None:
        """Export the size and event counts of `index` (summed with any bound before)."""
        if self._index_collector is None:
            self._index_collector = _IndexCollector()
            self.registry.register(self._index_collector)
        self._index_collector.sources.append((model, index, follower))


class ModelRouterMetrics:
    """One model's router metrics: children bound to its `model` label once."""

    def __init__(self, families: RouterMetrics, model: str) -> None:
        self.families = families
        self.model = model
        self.kv_cache_hit_ratio = families.kv_cache_hit_ratio.labels(model)
        self.prompt_blocks = families.prompt_blocks.labels(model)
        self.overlap_blocks = families.overlap_blocks.labels(model)
        self.decision_seconds = families.decision_seconds.labels(model)
        self.queue_wait_seconds = families.queue_wait_seconds.labels(model)
        self.queued = families.queued.labels(model)
        self.rejected = families.rejected.labels(model)
        self._decision_children: dict[str, Counter] = {}
        self._prompt_total = 0
        self._overlap_total = 0

    @property
    def registry(self) -> CollectorRegistry:
        return self.families.registry

    def bind(self, index: RadixIndex, follower: KvEventFollower | None) -> None:
        """Export the size and event counts of this model's `index`."""
        self.families.bind(self.model, index, follower)

    def _decisions_of(self, instance_id: str) -> Counter:
        child = self._decision_children.get(instance_id)
        if child is None:
            child = self._decision_children[instance_id] = self.families.decisions.labels(
                self.model, instance_id
            )
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
