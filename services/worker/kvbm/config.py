"""Settings of the tiered KV cache (KVBM), shared by the torch engine and the mocker.

Flags are flat (`--connector kvbm --kvbm-host-gb 8`): each engine config embeds one
`KvbmConfig` and the config parser flattens it. A tier's size is given in GB or in blocks;
the engine turns GB into blocks with its own bytes per block (`capacity_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.runtime.config import option
from tandem.runtime.kv_tiers import DEVICE_TIER, DISK_TIER, HOST_TIER, TIERS

DEFAULT_HOST_BLOCKS_PER_DEVICE_BLOCK = 4
"""Host tier size when none is given: this many times the device pool (host memory is
several times larger than device memory on a serving node)."""
DEFAULT_DISK_BLOCKS_PER_HOST_BLOCK = 4
"""Disk tier size when none is given: this many times the host tier."""


@dataclass(frozen=True, slots=True)
class KvbmConfig:
    """Tiered KV cache: blocks the device pool evicts move to host memory, then to disk."""

    connector: str = option(
        "none",
        "KV cache connector: none (the device pool only) or kvbm (device -> host memory -> "
        "disk tiers, --kvbm-*)",
        choices=("none", "kvbm"),
    )
    kvbm_storage_tiers: str = option(
        "hbm,host_dram",
        "tiers, fastest first: hbm (the engine's own KV pool, wherever it lives), host_dram, "
        "nvme_ssd (needs --kvbm-nvme-path)",
    )
    kvbm_offload_ratio: float = option(
        0.0,
        "write a full device block down to host memory once more than this share of the "
        "device pool holds blocks not yet written down: 0 = every block as soon as it is "
        "full (write-through, off the engine step), 1 = only a block the pool evicts (the "
        "step waits for that copy)",
    )
    kvbm_nvme_path: str = option(
        "",
        "directory of the disk tier's block files (torch engine; the mocker's disk is "
        "simulated); a restarted worker reloads them",
    )
    kvbm_host_gb: float = option(
        0.0, "host tier size in GB (10^9 bytes); 0 = --num-host-blocks, else 4x the device pool"
    )
    kvbm_disk_gb: float = option(
        0.0, "disk tier size in GB; 0 = --num-disk-blocks, else 4x the host tier"
    )
    num_host_blocks: int = option(0, "host tier size in blocks (when --kvbm-host-gb is 0)")
    num_disk_blocks: int = option(0, "disk tier size in blocks (when --kvbm-disk-gb is 0)")
    kvbm_disk_min_uses: int = option(
        0,
        "write a host block to disk only once it was brought back to the device this many "
        "times (0 = every block that reaches host memory; 1 = only reused blocks)",
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.kvbm_offload_ratio <= 1.0:
            raise ValueError(
                f"--kvbm-offload-ratio must be in [0, 1], got {self.kvbm_offload_ratio}"
            )
        for name in ("kvbm_host_gb", "kvbm_disk_gb", "num_host_blocks", "num_disk_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
        if self.kvbm_disk_min_uses < 0:
            raise ValueError("--kvbm-disk-min-uses must be >= 0")
        if not self.enabled:
            return
        tiers = self.tiers
        unknown = [t for t in tiers if t not in TIERS]
        if unknown or not tiers or tiers[0] != DEVICE_TIER or len(set(tiers)) != len(tiers):
            raise ValueError(
                f"--kvbm-storage-tiers {self.kvbm_storage_tiers!r}: a list of distinct tiers "
                f"starting with {DEVICE_TIER}, from {', '.join(TIERS)}"
            )
        if list(tiers) != [t for t in TIERS if t in tiers]:
            raise ValueError(
                f"--kvbm-storage-tiers must list tiers fastest first: {', '.join(TIERS)}"
            )
        if DISK_TIER in tiers and HOST_TIER not in tiers:
            raise ValueError("--kvbm-storage-tiers: nvme_ssd sits below host_dram; list both")
        if len(tiers) == 1:
            raise ValueError("--connector kvbm needs a tier below hbm in --kvbm-storage-tiers")

    @property
    def enabled(self) -> bool:
        return self.connector == "kvbm"

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.kvbm_storage_tiers.split(",") if t.strip())

    @property
    def has_host(self) -> bool:
        return self.enabled and HOST_TIER in self.tiers

    @property
    def has_disk(self) -> bool:
        return self.enabled and DISK_TIER in self.tiers

    def host_blocks(self, device_blocks: int, bytes_per_block: int) -> int:
        """Host tier capacity in blocks (0 when the tier is off)."""
        if not self.has_host:
            return 0
        if self.kvbm_host_gb > 0:
            return max(1, int(self.kvbm_host_gb * 1e9) // bytes_per_block)
        return self.num_host_blocks or DEFAULT_HOST_BLOCKS_PER_DEVICE_BLOCK * device_blocks

    def disk_blocks(self, device_blocks: int, bytes_per_block: int) -> int:
        """Disk tier capacity in blocks (0 when the tier is off)."""
        if not self.has_disk:
            return 0
        if self.kvbm_disk_gb > 0:
            return max(1, int(self.kvbm_disk_gb * 1e9) // bytes_per_block)
        if self.num_disk_blocks:
            return self.num_disk_blocks
        return DEFAULT_DISK_BLOCKS_PER_HOST_BLOCK * self.host_blocks(device_blocks, bytes_per_block)
