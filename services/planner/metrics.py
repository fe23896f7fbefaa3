"""The planner's Prometheus metrics (`tandem_planner_*`), declared for docs/metrics.md."""

from __future__ import annotations

from tandem.runtime.metrics import MetricGroup, registry_for

PLANNER = MetricGroup("planner", "Planner", labels=("model",))
SCALING_EVENTS = PLANNER.counter(
    "scaling_events_total",
    "Changes of the desired pool size.",
    ("direction",),
    detail="`direction` is `up` or `down`; both series exist from the start at 0.",
)
DESIRED_REPLICAS = PLANNER.gauge("desired_replicas", "Pool size the planner last asked for.")
OBSERVED_REPLICAS = PLANNER.gauge("observed_replicas", "Live workers of the model in etcd.")
KV_USAGE = PLANNER.gauge("kv_usage", "Pool KV usage (active / total blocks) the last decision saw.")
IS_LEADER = PLANNER.gauge(
    "is_leader", "1 while this planner is the model's active planner, 0 while it stands by."
)
POOL_REPLICAS = PLANNER.gauge(
    "pool_desired_replicas",
    "Workers the last decision asked for, per pool.",
    ("pool",),
    detail="`pool` is `aggregated` (--mode sla), or `prefill` and `decode` when "
    "disaggregated (both modes).",
)
# --mode sla: every input of the last decision.
PREDICTED = PLANNER.gauge(
    "predicted_demand",
    "Demand the SLA planner predicted for the next interval.",
    ("quantity",),
    detail="`quantity` is `request_rate` (requests/s), `input_tokens` or `output_tokens` "
    "(mean per request).",
)
OBSERVED_DEMAND = PLANNER.gauge(
    "observed_demand",
    "Demand the frontends saw over the last interval.",
    ("quantity",),
    detail="The same `quantity` values as `predicted_demand`.",
)
LATENCY = PLANNER.gauge(
    "latency_seconds",
    "Mean TTFT and ITL the frontends observed and the profile expected over the last interval.",
    ("phase", "source"),
    detail="`phase` is `ttft` or `itl`; `source` is `observed` or `expected`.",
)
CORRECTION = PLANNER.gauge(
    "latency_correction",
    "Observed over expected latency (smoothed) the SLA planner applies to its targets.",
    ("phase",),
)
CAPACITY = PLANNER.gauge(
    "worker_capacity_tokens_per_second",
    "Tokens/s one worker sustains within the corrected targets, from the profile.",
    ("phase",),
    detail="`phase` `prefill`: prompt tokens within the TTFT target; `decode`: output tokens "
    "within the ITL target.",
)


class PlannerMetrics:
    """Owns the planner's metric objects in one registry, labelled with the planned model."""

    def __init__(self, model: str) -> None:
        self.registry = registry_for(PLANNER, model=model)
        r = self.registry
        self.scaling_events = SCALING_EVENTS.create(r)
        self.desired_replicas = DESIRED_REPLICAS.create(r)
        self.observed_replicas = OBSERVED_REPLICAS.create(r)
        self.kv_usage = KV_USAGE.create(r)
        self.is_leader = IS_LEADER.create(r)
        self.pool_replicas = POOL_REPLICAS.create(r)
        self.predicted = PREDICTED.create(r)
        self.observed_demand = OBSERVED_DEMAND.create(r)
        self.latency = LATENCY.create(r)
        self.correction = CORRECTION.create(r)
        self.capacity = CAPACITY.create(r)
        # Export both directions from the start, so a rate() over them exists at 0.
        for direction in ("up", "down"):
            self.scaling_events.labels(direction)
