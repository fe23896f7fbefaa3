"""Building a worker's tiered KV cache: the registry sized from the flags, and the mocker's
(timed) copier. The torch engine's builder, which moves real bytes, is
`torch_engine/tiers.py`: the mocker must not import torch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tandem.runtime.kv_tiers import DISK_TIER, HOST_TIER

from ..kv_event_sink import KvEventSink
from .config import KvbmConfig
from .manager import Kvbm
from .registry import BlockRegistry, TierPool
from .sim_copier import SimulatedCopier

log = logging.getLogger(__name__)


def tier_registry(config: KvbmConfig, device_blocks: int, bytes_per_block: int) -> BlockRegistry:
    """The lower tiers `config` asks for, each sized in blocks."""
    host_blocks = config.host_blocks(device_blocks, bytes_per_block)
    disk_blocks = config.disk_blocks(device_blocks, bytes_per_block)
    return BlockRegistry(
        TierPool(HOST_TIER, host_blocks) if host_blocks else None,
        TierPool(DISK_TIER, disk_blocks) if disk_blocks else None,
    )


def log_tiers(kvbm: Kvbm, engine: str) -> None:
    sizes = " ".join(
        f"{pool.tier}={pool.capacity}blocks/{pool.capacity * kvbm.bytes_per_block / 1e9:.2f}GB"
        for pool in kvbm.registry.tiers()
    )
    log.info(
        "kvbm on engine=%s %s offload_ratio=%g disk_min_uses=%d",
        engine, sizes, kvbm.config.kvbm_offload_ratio, kvbm.config.kvbm_disk_min_uses,
    )  # fmt: skip


def simulated_kvbm(
    config: KvbmConfig,
    device_blocks: int,
    bytes_per_block: int,
    host_gbps: float,
    disk_gbps: float,
    speedup_ratio: float,
    sink: KvEventSink | None,
    wake: Callable[[], None],
) -> Kvbm:
    """The mocker's tiers: the same registry and policy, copies that only take time."""
    registry = tier_registry(config, device_blocks, bytes_per_block)
    copier = SimulatedCopier(
        bytes_per_block, host_gbps, disk_gbps, speedup_ratio, asyncio.get_running_loop(), wake
    )
    kvbm = Kvbm(config, registry, copier, bytes_per_block, sink)
    log_tiers(kvbm, "mocker")
    return kvbm
