"""Which workers hold which KV blocks: the index the KV router scores with.

Chained sequence hashes (libs/runtime/block_hash.py) name a whole prefix, so
the radix tree over blocks flattens into one dict `block_hash -> node`,
where a node is the bitmask of workers holding that block. For a request's
hashes, one walk from the first block narrows the mask and records, for
each worker, where it drops out: that is its number of leading cached blocks.
A bitmask AND is one machine-word operation for up to 64 workers and a few
for hundreds, so a decision stays cheap however many workers share a prefix.

Removed blocks free their node once no worker holds them, and every worker
keeps the set of its own hashes so that AllCleared / leaving etcd drops all
of them at once: memory is bounded by the blocks actually resident.
Pure and synchronous: no I/O, no protobuf; the KV event follower feeds it.

Both directions are hot (bench/router_index.py). A store is one dict
`setdefault` per block (a block no one held takes the worker's own bit
object, so nothing is allocated; a mask of several workers is one shared
object per distinct set of workers) plus one set update for the whole event.
A lookup fetches the masks with `map` and visits only the depths where the
mask changes (`groupby`, which compares shared objects by identity), since
consecutive blocks of a prefix are mostly held by the same workers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from itertools import groupby, repeat

MAX_INTERNED_MASKS = 1 << 16
"""Distinct worker sets remembered for sharing; beyond this the memo starts again."""


class RadixIndex:
    """Owns the block -> workers map and each worker's set of resident blocks."""

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}  # block_hash -> bitmask of worker slots
        self._worker_blocks: dict[str, set[int]] = {}
        self._bit_of: dict[str, int] = {}  # worker -> 1 << its slot (one int object per worker)
        self._worker_of: list[str | None] = []  # slot -> worker id
        self._free_slots: list[int] = []
        # One int object per distinct mask value: most blocks of a prefix share their holders,
        # so a walk compares neighbours by identity without touching the objects.
        self._masks: dict[int, int] = {}

    # -- size -------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        """Distinct blocks resident on at least one worker (index nodes)."""
        return len(self._blocks)

    @property
    def num_entries(self) -> int:
        """(worker, block) pairs."""
        return sum(len(b) for b in self._worker_blocks.values())

    @property
    def workers(self) -> list[str]:
        return list(self._worker_blocks)

    def worker_blocks(self, worker: str) -> set[int]:
        """The blocks `worker` holds (a copy)."""
        return set(self._worker_blocks.get(worker, ()))

    def num_worker_blocks(self, worker: str) -> int:
        return len(self._worker_blocks.get(worker, ()))

    # -- updates ----------------------------------------------------------------

    def store(self, worker: str, block_hashes: Collection[int]) -> None:
        """`worker` now holds these blocks (idempotent)."""
        bit = self._bit_of.get(worker)
        if bit is None:
            bit = self._add_worker(worker)
        blocks = self._blocks
        setdefault = blocks.setdefault
        intern = self._masks.setdefault
        for h in block_hashes:
            mask = setdefault(h, bit)
            if mask is not bit:  # someone held it already (identity: `bit` itself means us)
                mask |= bit
                blocks[h] = intern(mask, mask)
        self._worker_blocks[worker].update(block_hashes)
        if len(self._masks) > MAX_INTERNED_MASKS:
            self._reset_masks()

    def remove(self, worker: str, block_hashes: Iterable[int]) -> None:
        """`worker` no longer holds these blocks; unknown ones are ignored."""
        owned = self._worker_blocks.get(worker)
        if not owned:
            return
        present = owned.intersection(block_hashes)
        owned -= present
        self._unset(self._bit_of[worker], present)

    def clear(self, worker: str) -> None:
        """Drop everything `worker` holds (AllCleared); it keeps its slot."""
        owned = self._worker_blocks.get(worker)
        if owned:
            self._unset(self._bit_of[worker], owned)
            self._worker_blocks[worker] = set()

    def _unset(self, bit: int, block_hashes: Iterable[int]) -> None:
        keep = ~bit
        blocks = self._blocks
        intern = self._masks.setdefault
        for h in block_hashes:
            mask = blocks[h] & keep
            if mask:
                blocks[h] = intern(mask, mask)
            else:
                del blocks[h]

    def remove_worker(self, worker: str) -> None:
        """`worker` left: drop its blocks and recycle its slot."""
        if worker not in self._bit_of:
            return
        self.clear(worker)
        slot = self._bit_of.pop(worker).bit_length() - 1
        del self._worker_blocks[worker]
        self._worker_of[slot] = None
        self._free_slots.append(slot)

    # -- lookup -----------------------------------------------------------------

    def overlaps(self, block_hashes: Iterable[int]) -> dict[str, int]:
        """Number of leading blocks of `block_hashes` each worker holds (workers with 0 omitted).

        Reads `block_hashes` only as far as the walk goes: up to the first block no worker
        holds with all the blocks before it (an iterator that hashes lazily stops there)."""
        result: dict[str, int] = {}
        hashes = iter(block_hashes)
        first = next(hashes, None)
        if first is None:
            return result
        get = self._blocks.get
        active = get(first, 0)
        if not active:
            return result
        # Within a run of equal masks `active` (already ANDed with that mask) cannot narrow,
        # so only the first depth of each run is looked at.
        depth = 1
        for mask, run in groupby(map(get, hashes, repeat(0))):
            narrowed = active & mask
            if narrowed != active:
                self._record(active ^ narrowed, depth, result)
                if not narrowed:
                    return result
                active = narrowed
            depth += len(list(run))
        self._record(active, depth, result)
        return result

    def _record(self, mask: int, depth: int, result: dict[str, int]) -> None:
        worker_of = self._worker_of
        while mask:
            low = mask & -mask
            worker = worker_of[low.bit_length() - 1]
            if worker is not None:
                result[worker] = depth
            mask ^= low

    def _add_worker(self, worker: str) -> int:
        if self._free_slots:
            slot = self._free_slots.pop()
            self._worker_of[slot] = worker
        else:
            slot = len(self._worker_of)
            self._worker_of.append(worker)
        bit = self._bit_of[worker] = 1 << slot
        self._masks[bit] = bit
        self._worker_blocks[worker] = set()
        return bit

    def _reset_masks(self) -> None:
        """Forget interned masks (identity is only a shortcut: equal values still compare equal)."""
        self._masks = {bit: bit for bit in self._bit_of.values()}
