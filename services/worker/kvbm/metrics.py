"""A worker's tiered-cache metrics (`tandem_kvbm_*`), read from `KvbmStats` at scrape time.

Registered on the worker's own registry (same model/worker/role labels) when its engine
runs with `--connector kvbm`; the engine thread only bumps plain ints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from tandem.runtime.metrics import MetricGroup

from .manager import KvbmStats

KVBM = MetricGroup(
    "kvbm",
    "Tiered KV cache (KVBM)",
    labels=("model", "worker", "role"),
    intro="Workers started with `--connector kvbm`. `tier` is `hbm` (the engine's own KV "
    "pool), `host_dram` or `nvme_ssd`; copy `kind` is `offload_host_dram` (device to "
    "host), `offload_nvme_ssd` (host to disk), `onboard_host_dram` (host to device) or "
    "`onboard_nvme_ssd` (disk to device).",
)
MEMORY_UTILIZATION = KVBM.gauge(
    "memory_utilization_percent", "Share of a tier's capacity holding blocks.", ("tier",)
)
OFFLOADED_BLOCKS = KVBM.counter(
    "offloaded_blocks_total", "Blocks written down into a tier.", ("tier",)
)
OFFLOADED_BYTES = KVBM.counter(
    "offloaded_bytes_total", "Bytes written down into a tier.", ("tier",)
)
ONBOARDED_BLOCKS = KVBM.counter(
    "onboarded_blocks_total", "Blocks copied back up to the device from a tier.", ("tier",)
)
ONBOARDED_BYTES = KVBM.counter(
    "onboarded_bytes_total", "Bytes copied back up to the device from a tier.", ("tier",)
)
HIT_RATE = KVBM.gauge(
    "hit_rate",
    "Share of admitted prompt blocks found in a tier since start.",
    ("tier",),
    detail="`hbm`: already on the device; the lower tiers: brought back from there instead "
    "of recomputed.",
)
LOOKUP_BLOCKS = KVBM.counter(
    "lookup_blocks_total", "Full prompt blocks looked up at admission (the hit rates' base)."
)
COPIES = KVBM.counter("copies_total", "Block copies finished.", ("kind",))
COPY_SECONDS = KVBM.counter(
    "copy_seconds_total",
    "Time from a copy's submission to its completion, summed.",
    ("kind",),
    detail="Divided by `copies_total`: the mean copy latency, queueing included.",
)
OFFLOADS_SKIPPED = KVBM.counter(
    "offloads_skipped_total", "Blocks not written down: every block of the tier was busy."
)
DECLINED_BLOCKS = KVBM.counter(
    "declined_onboard_blocks_total",
    "Blocks a lower tier held that were recomputed instead of copied up.",
    ("tier",),
    detail="`tier`: the one whose copy was measured slower than the engine recomputes; the "
    "prompt's blocks after its first such block are recomputed too and counted with it.",
)
FAILED_READS = KVBM.counter(
    "failed_reads_total",
    "Block files found torn, truncated or foreign when read back: dropped, recomputed.",
)


class KvbmCollector(Collector):
    """Turns one `KvbmStats` snapshot per scrape into the families above."""

    def __init__(self, stats: Callable[[], KvbmStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        if s is None:  # no tiered cache on this worker
            return
        util = MEMORY_UTILIZATION.family()
        for tier, value in s.utilization.items():
            util.add_metric([tier], 100.0 * value)
        yield util
        for spec, counts, scale in (
            (OFFLOADED_BLOCKS, s.offloaded_blocks, 1),
            (OFFLOADED_BYTES, s.offloaded_blocks, s.bytes_per_block),
            (ONBOARDED_BLOCKS, s.onboarded_blocks, 1),
            (ONBOARDED_BYTES, s.onboarded_blocks, s.bytes_per_block),
        ):
            family = spec.family()
            for tier, n in counts.items():
                family.add_metric([tier], n * scale)
            yield family
        hits = HIT_RATE.family()
        base = s.lookup_blocks
        for tier in s.utilization:  # every tier this worker has
            hits.add_metric([tier], s.hit_blocks.get(tier, 0) / base if base else 0.0)
        yield hits
        yield LOOKUP_BLOCKS.family(s.lookup_blocks)
        copies, seconds = COPIES.family(), COPY_SECONDS.family()
        for kind, n in s.copies.items():
            copies.add_metric([kind], n)
            seconds.add_metric([kind], s.copy_seconds.get(kind, 0.0))
        yield copies
        yield seconds
        yield OFFLOADS_SKIPPED.family(s.offloads_skipped)
        declined = DECLINED_BLOCKS.family()
        for tier, n in s.declined_blocks.items():
            declined.add_metric([tier], n)
        yield declined
        yield FAILED_READS.family(s.failed_reads)
