"""The planner's Prometheus metrics (`tandem_planner_*`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from tandem.runtime.metrics import MetricsFactory


class PlannerMetrics:
    """Owns the planner's metric objects in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        factory = MetricsFactory("planner", registry)
        self.registry = factory.registry
        self.scaling_events = factory.counter(
            "scaling_events_total", "Changes of the desired pool size.", ("direction",)
        )
        self.desired_replicas = factory.gauge(
            "desired_replicas", "Pool size the planner last asked for."
        )
        self.observed_replicas = factory.gauge(
            "observed_replicas", "Live workers of the model in etcd."
        )
        self.kv_usage = factory.gauge(
            "kv_usage", "Pool KV usage (active / total blocks) the last decision saw."
        )
        # Export both directions from the start, so a rate() over them exists at 0.
        for direction in ("up", "down"):
            self.scaling_events.labels(direction)
