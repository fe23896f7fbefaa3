"""A worker's Prometheus metrics (`tandem_worker_*`), declared for docs/metrics.md.

Request counters and latencies are updated by the gRPC service; the engine's
state (`EngineStats`) is read at scrape time, never stale. Each hosted worker
(`--num-workers`) has its own registry and `/metrics` port, labelled with its
model, instance id and role.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from tandem.runtime.metrics import MetricGroup, registry_for

from .engine import EngineStats
from .kvbm.manager import KvbmStats
from .kvbm.metrics import KvbmCollector

WORKER = MetricGroup(
    "worker",
    "Worker",
    labels=("model", "worker", "role"),
    notes="The gauges from `kv_total_blocks` down and `preemptions_total` are read from the "
    "engine's `EngineStats` at scrape time, never stale.",
)
REQUESTS = WORKER.counter(
    "requests_total",
    "Ended requests by outcome.",
    ("finish_reason",),
    detail="`finish_reason` is `stop`, `length`, `abort` (cancelled or failed mid-stream), "
    "`error`, or `invalid` (refused by admission).",
)
PROMPT_TOKENS = WORKER.counter("prompt_tokens_total", "Prompt tokens of finished requests.")
CACHED_PROMPT_TOKENS = WORKER.counter(
    "cached_prompt_tokens_total",
    "Prompt tokens of finished requests served from the prefix cache.",
)
GENERATED_TOKENS = WORKER.counter("generated_tokens_total", "Tokens generated.")
PREFILL_LATENCY = WORKER.histogram(
    "prefill_latency_seconds", "Request arrival to its first token (queueing + prefill)."
)
REQUEST_LATENCY = WORKER.histogram("request_latency_seconds", "Request arrival to its end.")
IN_FLIGHT = WORKER.gauge("in_flight_requests", "Requests being generated now.")
KV_TOTAL_BLOCKS = WORKER.gauge("kv_total_blocks", "KV cache blocks in the pool.")
KV_ACTIVE_BLOCKS = WORKER.gauge(
    "kv_active_blocks", "KV blocks referenced by running or waiting requests."
)
KV_CACHED_BLOCKS = WORKER.gauge("kv_cached_blocks", "Unreferenced KV blocks kept for prefix reuse.")
KV_USAGE_RATIO = WORKER.gauge("kv_usage_ratio", "Active KV blocks / total blocks.")
PREFIX_CACHE_HIT_RATIO = WORKER.gauge(
    "prefix_cache_hit_ratio", "Fraction of prompt tokens served from the prefix cache since start."
)
RUNNING_REQUESTS = WORKER.gauge("running_requests", "Requests in the running batch.")
WAITING_REQUESTS = WORKER.gauge("waiting_requests", "Requests queued for admission (queue depth).")
PENDING_PREFILL_TOKENS = WORKER.gauge(
    "pending_prefill_tokens",
    "Prompt tokens admitted or queued but not yet prefilled (a queued request's cached "
    "prefix excluded).",
)
PREFILL_STEP_SECONDS = WORKER.gauge(
    "prefill_step_seconds", "Recent average duration of an engine step that prefills."
)
DECODE_STEP_SECONDS = WORKER.gauge(
    "decode_step_seconds", "Recent average duration of a decode-only step."
)
PREEMPTIONS = WORKER.counter("preemptions_total", "Requests preempted because KV blocks ran out.")
# Disaggregated serving (services/worker/disagg/).
REMOTE_PREFILLS = WORKER.counter(
    "remote_prefills_total",
    "Decode role: requests the frontend sent for remote prefill, by how their prefill went.",
    ("outcome",),
    detail="`outcome`: `remote` (the KV arrived), `local_timeout` (none within "
    "`--remote-prefill-timeout`), `local_failed` (the prefill worker reported a failure), "
    "`local_no_blocks` (no room to park it), `local_publish_failed` (the job could not be "
    "queued), `local_no_prefill_worker` (its prefill worker left and no other is live), "
    "`refused_late` (a completion for a job no longer waited for).",
)
PREFILL_REDELIVERIES = WORKER.counter(
    "prefill_redeliveries_total",
    "Decode role: prefill jobs moved to another prefill worker because theirs left "
    "(its etcd record went: crashed or stopped) before the KV arrived.",
)
PREFILL_JOBS = WORKER.counter(
    "prefill_jobs_total",
    "Prefill role: prefill jobs run, by outcome.",
    ("outcome",),
    detail="`outcome`: `done`, `refused` (the decode worker no longer waited), `failed`, "
    "`transfer_failed`, `decode_unreachable` (dropped), `error` (nak'ed, delivered again).",
)
KV_TRANSFER_BYTES = WORKER.counter(
    "kv_transfer_bytes_total",
    "KV cache bytes moved between workers.",
    ("direction",),
    detail="`direction`: `sent` (prefill role) or `received` (decode role).",
)
KV_TRANSFER_SECONDS = WORKER.histogram(
    "kv_transfer_seconds", "Duration of one KV transfer, on the sending (prefill) worker."
)
KV_TRANSFER_GBPS = WORKER.gauge(
    "kv_transfer_gbps", "Throughput of the latest KV transfer sent, GB/s (10^9 bytes/s)."
)


class EngineStatsCollector(Collector):
    """Reads `EngineStats` when scraped: never stale, and free between scrapes."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield KV_TOTAL_BLOCKS.family(s.total_blocks)
        yield KV_ACTIVE_BLOCKS.family(s.active_blocks)
        yield KV_CACHED_BLOCKS.family(s.cached_blocks)
        yield KV_USAGE_RATIO.family(s.kv_usage)
        yield PREFIX_CACHE_HIT_RATIO.family(s.prefix_cache_hit_rate)
        yield RUNNING_REQUESTS.family(s.num_running)
        yield WAITING_REQUESTS.family(s.num_waiting)
        yield PENDING_PREFILL_TOKENS.family(s.pending_prefill_tokens)
        yield PREFILL_STEP_SECONDS.family(s.prefill_step_seconds_avg)
        yield DECODE_STEP_SECONDS.family(s.decode_step_seconds_avg)
        yield PREEMPTIONS.family(s.num_preemptions)


class WorkerMetrics:
    """Owns one worker's registry and the metrics the gRPC service updates."""

    def __init__(
        self,
        stats: Callable[[], EngineStats],
        *,
        model: str,
        instance_id: str,
        role: str,
        kvbm_stats: Callable[[], KvbmStats | None] | None = None,
    ) -> None:
        self.registry = registry_for(WORKER, model=model, worker=instance_id, role=role)
        r = self.registry
        self.requests = REQUESTS.create(r)
        self.prompt_tokens = PROMPT_TOKENS.create(r)
        self.cached_tokens = CACHED_PROMPT_TOKENS.create(r)
        # Counted per output on the hot path: a plain int read at scrape, not a locked Counter.
        self.num_generated_tokens = 0
        self.prefill_latency = PREFILL_LATENCY.create(r)
        self.request_latency = REQUEST_LATENCY.create(r)
        self.in_flight = IN_FLIGHT.create(r)
        self.remote_prefills = REMOTE_PREFILLS.create(r)
        self.prefill_redeliveries = PREFILL_REDELIVERIES.create(r)
        self.prefill_jobs = PREFILL_JOBS.create(r)
        self.kv_transfer_bytes = KV_TRANSFER_BYTES.create(r)
        self.kv_transfer_seconds = KV_TRANSFER_SECONDS.create(r)
        self.kv_transfer_gbps = KV_TRANSFER_GBPS.create(r)
        r.register(EngineStatsCollector(stats))
        if kvbm_stats is not None:
            r.register(KvbmCollector(kvbm_stats))
        r.register(_GeneratedTokensCollector(self))


class _GeneratedTokensCollector(Collector):
    def __init__(self, metrics: WorkerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield GENERATED_TOKENS.family(self._metrics.num_generated_tokens)
