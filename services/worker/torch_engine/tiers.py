"""The torch engine's tiered KV cache: a host arena and block files beside its KV tensors,
bytes moved by the KVBM's copy thread."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from tandem.worker.kv_event_sink import KvEventSink
from tandem.worker.kv_transfer.pool import layout_of
from tandem.worker.kvbm.build import log_tiers, tier_registry
from tandem.worker.kvbm.config import KvbmConfig
from tandem.worker.kvbm.disk_store import DiskStore, layout_fingerprint
from tandem.worker.kvbm.host_arena import HostArena
from tandem.worker.kvbm.manager import Kvbm
from tandem.worker.kvbm.thread_copier import ThreadCopier

log = logging.getLogger(__name__)


def torch_kvbm(
    config: KvbmConfig,
    kv_cache: Sequence[torch.Tensor],
    block_size: int,
    model: str,
    sink: KvEventSink | None,
    wake: Callable[[], None],
) -> Kvbm:
    """The torch engine's tiers over its per-layer KV tensors; block files a previous run left
    under --kvbm-nvme-path are checked, kept and announced."""
    layout = layout_of(kv_cache, block_size)
    registry = tier_registry(config, layout.num_blocks, layout.bytes_per_block)
    assert registry.host is not None  # the config refuses tiers without host memory
    arena = HostArena(layout, registry.host.capacity)
    disk = None
    if registry.disk is not None:
        if not config.kvbm_nvme_path:
            raise ValueError("--kvbm-storage-tiers has nvme_ssd: give --kvbm-nvme-path DIR")
        disk = DiskStore(
            config.kvbm_nvme_path, layout_fingerprint(layout, model), layout.bytes_per_block
        )
    copier = ThreadCopier(kv_cache, layout, arena, disk, on_complete=wake)
    kvbm = Kvbm(config, registry, copier, layout.bytes_per_block, sink)
    log_tiers(kvbm, "torch")
    if disk is not None:
        kept = kvbm.announce_disk(list(disk.scan()))
        log.info("kvbm disk tier reloaded blocks=%d path=%s", kept, config.kvbm_nvme_path)
    return kvbm
