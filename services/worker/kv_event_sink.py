"""The seam between a KV cache and whoever reports its changes (see kv_publisher.py).

Every change names the tier it happened in (`tandem.runtime.kv_tiers`): the engine's own
pool (the default) or a KV block manager's host memory or disk. One worker may hold a block
in several tiers at once; a tier's `stored`/`removed` say nothing about the others.
"""

from __future__ import annotations

from typing import Protocol

from tandem.runtime.kv_tiers import DEVICE_TIER


class KvEventSink(Protocol):
    """Receives KV cache changes in the order they happen. May be called from an engine thread."""

    def stored(
        self, parent_hash: int | None, blocks: list[tuple[int, int]], tier: str = DEVICE_TIER
    ) -> None:
        """Blocks `(sequence_hash, local_hash)` became resident in `tier`; the first follows
        `parent_hash`."""

    def removed(self, block_hashes: list[int], tier: str = DEVICE_TIER) -> None:
        """Blocks were evicted from `tier` and are no longer resident there."""

    def cleared(self) -> None:
        """Every block was dropped, from every tier."""


class RecordingSink:
    """Keeps events in lists; for tests and for engines run without a publisher.

    `events`: the device tier's changes and clears, as `("stored", (parent, blocks))`,
    `("removed", hashes)`, `("cleared", None)` (what a cache without tiers always recorded);
    `tier_events`: every change with its tier, `(kind, tier, data)` (`tier` '' for a clear).
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.tier_events: list[tuple[str, str, object]] = []

    def stored(
        self, parent_hash: int | None, blocks: list[tuple[int, int]], tier: str = DEVICE_TIER
    ) -> None:
        data = (parent_hash, list(blocks))
        self.tier_events.append(("stored", tier, data))
        if tier == DEVICE_TIER:
            self.events.append(("stored", data))

    def removed(self, block_hashes: list[int], tier: str = DEVICE_TIER) -> None:
        self.tier_events.append(("removed", tier, list(block_hashes)))
        if tier == DEVICE_TIER:
            self.events.append(("removed", list(block_hashes)))

    def cleared(self) -> None:
        self.tier_events.append(("cleared", "", None))
        self.events.append(("cleared", None))
