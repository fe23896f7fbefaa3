"""A minimal KV event reader: what a router index keeps, to compare event streams in tests."""

from __future__ import annotations

from tandem.runtime.wire.kv_events_pb2 import KvEvent


def apply(events: list[KvEvent], state: dict[int, int | None]) -> None:
    """Apply `events` to `state`: block hash -> parent hash."""
    for ev in events:
        kind = ev.WhichOneof("data")
        if kind == "cleared":
            state.clear()
        elif kind == "stored":
            parent = ev.stored.parent_hash if ev.stored.HasField("parent_hash") else None
            for block in ev.stored.blocks:
                state[block.block_hash] = parent
                parent = block.block_hash
        else:
            for h in ev.removed.block_hashes:
                state.pop(h, None)
