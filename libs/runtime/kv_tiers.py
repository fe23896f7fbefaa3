"""Names of the KV cache tiers, as KV events (`tier`) and metrics (`tier` label) carry them.

One source for the worker's block managers, the KV event publisher and the router's index.
"""

from __future__ import annotations

DEVICE_TIER = "hbm"
"""The engine's own KV pool, wherever it lives (GPU memory; CPU memory for the torch engine
on a machine without one)."""
HOST_TIER = "host_dram"
DISK_TIER = "nvme_ssd"
TIERS = (DEVICE_TIER, HOST_TIER, DISK_TIER)
"""Fastest first."""


def tier_of(name: str) -> str:
    """The tier a KV event names ('' from a worker that predates tiers: the device)."""
    return name or DEVICE_TIER
