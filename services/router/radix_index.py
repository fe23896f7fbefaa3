"""Which workers hold which KV blocks: the index the KV router scores with.

Chained sequence hashes (libs/runtime/block_hash.py) name a whole prefix, so
the radix tree over blocks flattens into one dict `block_hash -> node`,
where a node is the bitmask of workers holding that block. For a request's
hashes, one walk from the first block narrows the mask and records, for
each worker, where it drops out: that is its number of leading cached blocks.
A bitmask AND is one machine-word operation for up to 64 workers and a few
for hundreds, so a decision stays cheap however many workers share a prefix.

Removed blocks free their node once no worker holds them. Every worker
keeps a log of the blocks it came to hold, so that AllCleared / leaving etcd
drops all of them at once (a walk over its own blocks, not the index); a
removed block stays in the log until the log is more than twice the blocks
the worker still holds, when it is compacted. Memory is bounded by the
blocks actually resident. Pure and synchronous: no I/O, no protobuf; the KV
event follower feeds it.

Both directions are hot (bench/router_index.py) and bound by memory more
than by Python: the blocks of one event sit at random places in a large
dict. A store is one probe per block (and a write if the block was not the
worker's). A block no one held takes the worker's own bit object, so nothing
is allocated; a mask of several workers is one shared object per distinct
set of workers, and the blocks of a stored prefix mostly share their
holders, so a block whose mask was just widened for the block before takes
the widened object without computing it again. The log takes one list
extend per event (a set of each worker's blocks cost a second random probe
per block, a third of a store). A lookup fetches the masks with `map` and
visits only the depths where the mask changes (`groupby`, which compares
shared objects by identity), since consecutive blocks of a prefix are
mostly held by the same workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import groupby, repeat

MAX_INTERNED_MASKS = 1 << 16
"""Distinct worker sets remembered for sharing; beyond this the memo starts again."""
LOG_SLACK = 1024
"""Removed blocks a worker's log keeps beyond twice its held blocks before it is compacted."""


@dataclass(slots=True)
class _Holder:
    """One worker's slot bit and the log of the blocks it came to hold."""

    bit: int  # 1 << slot: one int object per worker, the mask of blocks only it holds
    log: list[int] = field(default_factory=list)  # held blocks, plus removed ones until compacted
    num_held: int = 0


class RadixIndex:
    """Owns the block -> workers map and each worker's log of resident blocks."""

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}  # block_hash -> bitmask of worker slots
        self._holders: dict[str, _Holder] = {}
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
        return sum(h.num_held for h in self._holders.values())

    @property
    def workers(self) -> list[str]:
        return list(self._holders)

    def worker_blocks(self, worker: str) -> set[int]:
        """The blocks `worker` holds (a copy)."""
        holder = self._holders.get(worker)
        if holder is None:
            return set()
        bit, get = holder.bit, self._blocks.get
        return {h for h in holder.log if get(h, 0) & bit}

    def num_worker_blocks(self, worker: str) -> int:
        holder = self._holders.get(worker)
        return holder.num_held if holder is not None else 0

    # -- updates ----------------------------------------------------------------

    def store(self, worker: str, block_hashes: Iterable[int]) -> None:
        """`worker` now holds these blocks (idempotent)."""
        holder = self._holders.get(worker) or self._add_worker(worker)
        bit = holder.bit
        blocks = self._blocks
        get = blocks.get
        intern = self._masks.setdefault
        new: list[int] = []
        append = new.append
        before: int | None = None  # the last mask this store widened...
        after = 0  # ...and what it became
        for h in block_hashes:
            mask = get(h)
            if mask is None:
                blocks[h] = bit
                append(h)
            elif mask is before:  # the blocks of a prefix mostly share one mask object
                blocks[h] = after
                append(h)
            elif not mask & bit:
                before = mask
                mask |= bit
                blocks[h] = after = intern(mask, mask)
                append(h)
        if new:
            holder.log += new
            holder.num_held += len(new)
            if len(self._masks) > MAX_INTERNED_MASKS:
                self._reset_masks()

    def remove(self, worker: str, block_hashes: Iterable[int]) -> None:
        """`worker` no longer holds these blocks; unknown ones are ignored."""
        holder = self._holders.get(worker)
        if holder is None or not holder.num_held:
            return
        removed = self._unset(holder.bit, block_hashes)
        if removed:
            holder.num_held -= removed
            if len(holder.log) > 2 * holder.num_held + LOG_SLACK:
                self._compact(holder)

    def clear(self, worker: str) -> None:
        """Drop everything `worker` holds (AllCleared); it keeps its slot."""
        holder = self._holders.get(worker)
        if holder is not None and holder.log:
            self._unset(holder.bit, holder.log)
            holder.log = []
            holder.num_held = 0

    def _unset(self, bit: int, block_hashes: Iterable[int]) -> int:
        """Take `bit` off those of `block_hashes` that have it; returns how many had it."""
        keep = ~bit
        blocks = self._blocks
        get = blocks.get
        intern = self._masks.setdefault
        removed = 0
        for h in block_hashes:
            mask = get(h)
            if mask is not None and mask & bit:
                removed += 1
                mask &= keep
                if mask:
                    blocks[h] = intern(mask, mask)
                else:
                    del blocks[h]
        return removed

    def _compact(self, holder: _Holder) -> None:
        """Keep only the blocks `holder` still holds, once each (a block removed and stored
        again is logged twice). Between two compactions a worker removes at least half as
        many blocks as the second one reads: at most two probes per removal on average."""
        bit, get = holder.bit, self._blocks.get
        holder.log = list(dict.fromkeys(h for h in holder.log if get(h, 0) & bit))

    def remove_worker(self, worker: str) -> None:
        """`worker` left: drop its blocks and recycle its slot."""
        holder = self._holders.pop(worker, None)
        if holder is None:
            return
        self._unset(holder.bit, holder.log)
        slot = holder.bit.bit_length() - 1
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

    def _add_worker(self, worker: str) -> _Holder:
        if self._free_slots:
            slot = self._free_slots.pop()
            self._worker_of[slot] = worker
        else:
            slot = len(self._worker_of)
            self._worker_of.append(worker)
        holder = self._holders[worker] = _Holder(1 << slot)
        self._masks[holder.bit] = holder.bit
        return holder

    def _reset_masks(self) -> None:
        """Forget interned masks (identity is only a shortcut: equal values still compare equal)."""
        self._masks = {h.bit: h.bit for h in self._holders.values()}
