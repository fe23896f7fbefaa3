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

Tiers. A worker with a KV block manager also holds blocks in host memory and
on disk (`tandem.runtime.kv_tiers`), often the same block in two tiers. A
worker's slot has three bits, one per tier (device at `3 * slot`, host and
disk above it), in the same masks of the same dict: a lower-tier event is
the store/remove above with another bit, and a tiered walk reads each
block's mask once and folds the tiers together (`m | m >> 1` puts a
worker's host bit on its device bit). Measured against a dict per tier with
one bit per worker, at 100 workers: the same for device-only events (2.6 vs
2.7 us per 16-block store, 29 vs 28 us per walk: 3x wider ints cost little),
and a tiered walk of a 250-block prompt took 54 us instead of 98 (one probe
per block instead of three). A walk only masks and folds where some worker
holds a block outside the device tier; a block held in several tiers counts
in the fastest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import groupby, repeat
from typing import NamedTuple

from tandem.runtime.kv_tiers import DEVICE_TIER, DISK_TIER, HOST_TIER

MAX_INTERNED_MASKS = 1 << 16
"""Distinct worker sets remembered for sharing; beyond this the memo starts again."""
LOG_SLACK = 1024
"""Removed blocks a worker's log keeps beyond twice its held blocks before it is compacted."""
TIER_BITS = {DEVICE_TIER: 0, HOST_TIER: 1, DISK_TIER: 2}
"""A tier's bit in a worker's three, above its device bit (fastest first)."""
LOWER_TIERS = (HOST_TIER, DISK_TIER)
"""Tiers indexed beside the device tier, fastest first."""
BITS_PER_WORKER = len(TIER_BITS)


class TierOverlaps(NamedTuple):
    """Per worker, a prompt's leading blocks by the fastest tier that holds them.

    `device`: the leading blocks held in the device tier; `host`: how many more follow held
    in host memory (or the device); `disk`: how many more after those held in any tier.
    Workers with 0 are omitted from each dict.
    """

    device: dict[str, int]
    host: dict[str, int]
    disk: dict[str, int]


@dataclass(slots=True)
class _Holding:
    """The log of the blocks one worker came to hold in one lower tier, and its bit."""

    bit: int
    log: list[int] = field(default_factory=list)  # held blocks, plus removed ones until compacted
    num_held: int = 0


@dataclass(slots=True)
class _Holder:
    """One worker's device bit, the log of its device blocks and its lower-tier holdings."""

    bit: int  # 1 << 3 * slot: one int object per worker, the mask of blocks only it holds
    log: list[int] = field(default_factory=list)  # held blocks, plus removed ones until compacted
    num_held: int = 0
    lower: dict[str, _Holding] = field(default_factory=dict)  # host/disk tier -> holding


class RadixIndex:
    """Owns the block -> (worker, tier) bits map and each worker's logs of its blocks."""

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}  # block_hash -> bitmask of (worker slot, tier)
        self._holders: dict[str, _Holder] = {}
        self._worker_of: list[str | None] = []  # bit position -> worker id (device bits only)
        self._free_slots: list[int] = []
        self._device_bits = 0  # every slot's device bit
        self._num_lower = 0  # (worker, block) pairs outside the device tier
        # One int object per distinct mask value: most blocks of a prefix share their holders,
        # so a walk compares neighbours by identity without touching the objects.
        self._masks: dict[int, int] = {}

    # -- size -------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        """Distinct blocks resident on at least one worker, in any tier (index nodes)."""
        return len(self._blocks)

    def num_tier_blocks(self, tier: str) -> int:
        """Distinct blocks resident in `tier` of at least one worker (a scan: not for hot paths)."""
        offset = _offset(tier)
        bits = self._device_bits << offset
        return sum(1 for mask in self._blocks.values() if mask & bits)

    @property
    def num_entries(self) -> int:
        """(worker, device block) pairs."""
        return sum(h.num_held for h in self._holders.values())

    @property
    def workers(self) -> list[str]:
        return list(self._holders)

    def worker_blocks(self, worker: str, tier: str = DEVICE_TIER) -> set[int]:
        """The blocks `worker` holds in `tier` (a copy)."""
        holder = self._holders.get(worker)
        if holder is None:
            return set()
        bit, log, _ = self._holding(holder, tier)
        get = self._blocks.get
        return {h for h in log if get(h, 0) & bit}

    def num_worker_blocks(self, worker: str, tier: str = DEVICE_TIER) -> int:
        holder = self._holders.get(worker)
        return self._holding(holder, tier)[2] if holder is not None else 0

    # -- updates ----------------------------------------------------------------

    def store(self, worker: str, block_hashes: Iterable[int], tier: str = DEVICE_TIER) -> None:
        """`worker` now holds these blocks in `tier` (idempotent)."""
        holder = self._holders.get(worker) or self._add_worker(worker)
        if tier == DEVICE_TIER:
            bit = holder.bit
        else:
            holding = holder.lower.get(tier) or self._add_holding(holder, tier)
            bit = holding.bit
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
            if tier == DEVICE_TIER:
                holder.log += new
                holder.num_held += len(new)
            else:
                holding.log += new
                holding.num_held += len(new)
                self._num_lower += len(new)
            if len(self._masks) > MAX_INTERNED_MASKS:
                self._reset_masks()

    def remove(self, worker: str, block_hashes: Iterable[int], tier: str = DEVICE_TIER) -> None:
        """`worker` no longer holds these blocks in `tier`; unknown ones are ignored."""
        holder = self._holders.get(worker)
        if holder is None:
            return
        if tier != DEVICE_TIER:
            self._remove_lower(holder, tier, block_hashes)
            return
        if not holder.num_held:
            return
        removed = self._unset(holder.bit, block_hashes)
        if removed:
            holder.num_held -= removed
            if len(holder.log) > 2 * holder.num_held + LOG_SLACK:
                holder.log = self._compacted(holder.bit, holder.log)

    def clear(self, worker: str) -> None:
        """Drop everything `worker` holds, in every tier (AllCleared); it keeps its slot."""
        holder = self._holders.get(worker)
        if holder is None:
            return
        if holder.log:
            self._unset(holder.bit, holder.log)
            holder.log = []
            holder.num_held = 0
        for holding in holder.lower.values():
            self._unset(holding.bit, holding.log)
            self._num_lower -= holding.num_held
        holder.lower = {}

    def _remove_lower(self, holder: _Holder, tier: str, block_hashes: Iterable[int]) -> None:
        _offset(tier)
        holding = holder.lower.get(tier)
        if holding is None:
            return
        removed = self._unset(holding.bit, block_hashes)
        holding.num_held -= removed
        self._num_lower -= removed
        if not holding.num_held:
            del holder.lower[tier]  # nothing left in the tier: its log goes too
        elif len(holding.log) > 2 * holding.num_held + LOG_SLACK:
            holding.log = self._compacted(holding.bit, holding.log)

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

    def _compacted(self, bit: int, log: list[int]) -> list[int]:
        """Only the blocks of `log` still held, once each (a block removed and stored again
        is logged twice). Between two compactions a worker removes at least half as many
        blocks as the second one reads: at most two probes per removal on average."""
        get = self._blocks.get
        return list(dict.fromkeys(h for h in log if get(h, 0) & bit))

    def remove_worker(self, worker: str) -> None:
        """`worker` left: drop its blocks in every tier and recycle its slot."""
        holder = self._holders.get(worker)
        if holder is None:
            return
        self.clear(worker)
        del self._holders[worker]
        position = holder.bit.bit_length() - 1
        self._worker_of[position] = None
        self._free_slots.append(position // BITS_PER_WORKER)

    # -- lookup -----------------------------------------------------------------

    def overlaps(self, block_hashes: Iterable[int]) -> dict[str, int]:
        """Number of leading blocks of `block_hashes` each worker holds in its device tier
        (workers with 0 omitted).

        Reads `block_hashes` only as far as the walk goes: up to the first block no worker
        holds with all the blocks before it (an iterator that hashes lazily stops there)."""
        result: dict[str, int] = {}
        hashes = iter(block_hashes)
        first = next(hashes, None)
        if first is None:
            return result
        get = self._blocks.get
        active = get(first, 0) & self._device_bits
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

    def tier_overlaps(self, block_hashes: Iterable[int]) -> TierOverlaps:
        """Per worker, the leading blocks of `block_hashes` in its device tier and how many
        more follow in host memory and on disk (see TierOverlaps).

        With no block held outside the device tier anywhere, this is `overlaps`. Otherwise
        one walk narrows three masks, all on device bit positions: held on the device, in
        the device or host memory (`m | m >> 1`), in any tier (`| m >> 2`)."""
        if not self._num_lower:
            return TierOverlaps(self.overlaps(block_hashes), {}, {})
        device: dict[str, int] = {}
        upto_host: dict[str, int] = {}
        upto_disk: dict[str, int] = {}
        hashes = iter(block_hashes)
        first = next(hashes, None)
        if first is None:
            return TierOverlaps(device, {}, {})
        get = self._blocks.get
        device_bits = self._device_bits
        mask = get(first, 0)
        on_device = mask & device_bits
        to_host = (mask | mask >> 1) & device_bits
        to_disk = (mask | mask >> 1 | mask >> 2) & device_bits
        if not to_disk:
            return TierOverlaps(device, {}, {})
        record = self._record
        depth = 1
        # Each mask only narrows, and on_device is within to_host, within to_disk.
        for mask, run in groupby(map(get, hashes, repeat(0))):
            narrowed = on_device & mask
            if narrowed != on_device:
                record(on_device ^ narrowed, depth, device)
                on_device = narrowed
            up = mask | mask >> 1
            narrowed = to_host & up
            if narrowed != to_host:
                record(to_host ^ narrowed, depth, upto_host)
                to_host = narrowed
            narrowed = to_disk & (up | mask >> 2)
            if narrowed != to_disk:
                record(to_disk ^ narrowed, depth, upto_disk)
                to_disk = narrowed
                if not narrowed:
                    break
            depth += len(list(run))
        else:
            record(on_device, depth, device)
            record(to_host, depth, upto_host)
            record(to_disk, depth, upto_disk)
        return TierOverlaps(device, _beyond(upto_host, device), _beyond(upto_disk, upto_host))

    def _record(self, mask: int, depth: int, result: dict[str, int]) -> None:
        """`result[w] = depth` for every worker whose device bit is in `mask`."""
        worker_of = self._worker_of
        while mask:
            low = mask & -mask
            worker = worker_of[low.bit_length() - 1]
            if worker is not None:
                result[worker] = depth
            mask ^= low

    # -- workers ------------------------------------------------------------------

    def _add_worker(self, worker: str) -> _Holder:
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = len(self._worker_of) // BITS_PER_WORKER
            self._worker_of += [None] * BITS_PER_WORKER
        position = slot * BITS_PER_WORKER
        self._worker_of[position] = worker
        holder = self._holders[worker] = _Holder(1 << position)
        self._masks[holder.bit] = holder.bit
        self._device_bits |= holder.bit
        return holder

    def _add_holding(self, holder: _Holder, tier: str) -> _Holding:
        bit = holder.bit << _offset(tier)
        holding = holder.lower[tier] = _Holding(self._masks.setdefault(bit, bit))
        return holding

    def _holding(self, holder: _Holder, tier: str) -> tuple[int, list[int], int]:
        """(bit, log, number held) of `holder` in `tier`."""
        if tier == DEVICE_TIER:
            return holder.bit, holder.log, holder.num_held
        holding = holder.lower.get(tier)
        if holding is None:
            return holder.bit << _offset(tier), [], 0
        return holding.bit, holding.log, holding.num_held

    def _reset_masks(self) -> None:
        """Forget interned masks (identity is only a shortcut: equal values still compare equal)."""
        self._masks = {h.bit: h.bit for h in self._holders.values()}


def _offset(tier: str) -> int:
    offset = TIER_BITS.get(tier)
    if offset is None:
        raise ValueError(f"unknown KV tier {tier!r}")
    return offset


def _beyond(upto: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Per worker, how far `upto` reaches past `before` (workers it does not pass omitted)."""
    get = before.get
    return {w: n - get(w, 0) for w, n in upto.items() if n > get(w, 0)}
