"""The seam between a KV cache and whoever reports its changes (see kv_publisher.py)."""

from __future__ import annotations

from typing import Protocol


class KvEventSink(Protocol):
    """Receives KV cache changes in the order they happen. May be called from an engine thread."""

    def stored(self, parent_hash: int | None, blocks: list[tuple[int, int]]) -> None:
        """Blocks `(sequence_hash, local_hash)` became resident; the first follows `parent_hash`."""

    def removed(self, block_hashes: list[int]) -> None:
        """Blocks were evicted and are no longer resident."""

    def cleared(self) -> None:
        """Every block was dropped."""


class RecordingSink:
    """Keeps events in a list; for tests and for engines run without a publisher."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def stored(self, parent_hash: int | None, blocks: list[tuple[int, int]]) -> None:
        self.events.append(("stored", (parent_hash, list(blocks))))

    def removed(self, block_hashes: list[int]) -> None:
        self.events.append(("removed", list(block_hashes)))

    def cleared(self) -> None:
        self.events.append(("cleared", None))
