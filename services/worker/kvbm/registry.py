"""Which lower KV tier holds each block, in what state, and which block a tier evicts next.

The device tier stays in the BlockManager; this registry tracks host memory and disk
(tier names from `tandem.runtime.kv_tiers`), keyed by the chained sequence hash. Pure and
synchronous, not thread-safe: the engine thread owns it and applies the copier's
completions to it.

A block in a tier is in one of three states:
- COPYING_DOWN: its bytes are being written into this tier, not readable yet, not evictable;
- RESIDENT: readable, evictable in LRU order;
- COPYING_UP: readable and being read by `ref_count` copies: pinned until they release it.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


class BlockState(enum.Enum):
    RESIDENT = "resident"
    COPYING_DOWN = "copying_down"
    COPYING_UP = "copying_up"


@dataclass(slots=True)
class TierBlock:
    """One block held by a lower tier."""

    block_hash: int
    local_hash: int
    parent_hash: int | None
    slot: int
    """Host tier: the block's slot in the host arena. Disk tier: a slot number, unused."""
    state: BlockState
    ref_count: int = 0
    """Copies reading the block now; not evictable while above 0."""
    uses: int = 0
    """Times the block was onboarded (for a frequency filter above this registry)."""


class TierPool:
    """One tier: `capacity` blocks, hash -> TierBlock, free slots, LRU of evictable blocks."""

    def __init__(self, tier: str, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"tier {tier!r} needs a positive capacity, got {capacity}")
        self.tier = tier
        self.capacity = capacity
        self._blocks: dict[int, TierBlock] = {}
        # Popped from the end: slot 0 first, so a lightly used arena touches its start only.
        self._free_slots = list(range(capacity - 1, -1, -1))
        self._lru: OrderedDict[int, None] = OrderedDict()  # RESIDENT with no readers, oldest first
        self._num_writing = 0  # COPYING_DOWN blocks

    # -- queries -------------------------------------------------------------

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, block_hash: int) -> TierBlock | None:
        return self._blocks.get(block_hash)

    def is_readable(self, block_hash: int) -> bool:
        """Present and written completely (not COPYING_DOWN)."""
        block = self._blocks.get(block_hash)
        return block is not None and block.state is not BlockState.COPYING_DOWN

    def hashes(self) -> list[int]:
        """Every block held, readable or not."""
        return list(self._blocks)

    @property
    def num_resident(self) -> int:
        """Readable blocks (RESIDENT or COPYING_UP)."""
        return len(self._blocks) - self._num_writing

    @property
    def num_evictable(self) -> int:
        return len(self._lru)

    @property
    def utilization(self) -> float:
        """Blocks held, being written ones included, over capacity (0..1)."""
        return len(self._blocks) / self.capacity

    # -- changes -------------------------------------------------------------

    def reserve(
        self, block_hash: int, local_hash: int, parent_hash: int | None
    ) -> tuple[TierBlock, list[TierBlock]] | None:
        """A slot for a new block, in state COPYING_DOWN, and the blocks evicted to make room.

        The caller reports the evicted blocks removed (and deletes their files). None,
        changing nothing, when `block_hash` is already here or every block is busy.
        """
        if block_hash in self._blocks:
            return None
        evicted: list[TierBlock] = []
        if not self._free_slots:
            if not self._lru:
                return None
            evicted.append(self._evict_oldest())
        block = TierBlock(
            block_hash, local_hash, parent_hash, self._free_slots.pop(), BlockState.COPYING_DOWN
        )
        self._blocks[block_hash] = block
        self._num_writing += 1
        return block, evicted

    def commit(self, block_hash: int) -> TierBlock:
        """A copy into this tier finished: the block is readable and the newest in LRU order."""
        block = self._blocks[block_hash]
        if block.state is not BlockState.COPYING_DOWN:
            raise ValueError(f"{self.tier}: block {block_hash:016x} is {block.state.value}")
        block.state = BlockState.RESIDENT
        self._num_writing -= 1
        self._lru[block_hash] = None
        return block

    def abort(self, block_hash: int) -> None:
        """A copy into this tier failed: forget the block, free its slot."""
        block = self._blocks.get(block_hash)
        if block is None:
            return
        if block.state is not BlockState.COPYING_DOWN:
            raise ValueError(f"{self.tier}: abort of block {block_hash:016x} ({block.state.value})")
        self._forget(block)

    def acquire(self, block_hash: int) -> TierBlock:
        """Pin a readable block for a copy out of it (KeyError if not readable)."""
        block = self._blocks.get(block_hash)
        if block is None or block.state is BlockState.COPYING_DOWN:
            raise KeyError(f"{self.tier}: block {block_hash:016x} is not readable")
        block.ref_count += 1
        block.state = BlockState.COPYING_UP
        self._lru.pop(block_hash, None)
        return block

    def release(self, block_hash: int) -> None:
        """A copy out of the block ended; the last one makes it the newest evictable block.

        A no-op for a block dropped meanwhile (a block reserved again under the same hash
        since is COPYING_DOWN and keeps its count).
        """
        block = self._blocks.get(block_hash)
        if block is None or block.state is not BlockState.COPYING_UP:
            return
        block.ref_count -= 1
        if block.ref_count == 0:
            block.state = BlockState.RESIDENT
            self._lru[block_hash] = None

    def drop(self, block_hash: int) -> TierBlock | None:
        """Remove a block now, whatever its state (its file turned out corrupt); frees its slot.

        The caller drops a host block only once no copy reads its slot any more.
        """
        block = self._blocks.get(block_hash)
        if block is not None:
            self._forget(block)
        return block

    def adopt(self, block: TierBlock) -> list[TierBlock]:
        """Insert a RESIDENT block found at start-up (the disk tier's files) as the newest.

        Gets a slot of this pool (`block.slot` is overwritten); evicts the oldest blocks
        when full and returns them. A hash already here is left as it is.
        """
        if block.block_hash in self._blocks:
            return []
        evicted: list[TierBlock] = []
        if not self._free_slots:
            if not self._lru:
                return [block]  # every block busy: the new one is what does not fit
            evicted.append(self._evict_oldest())
        block.slot = self._free_slots.pop()
        block.state = BlockState.RESIDENT
        block.ref_count = 0
        self._blocks[block.block_hash] = block
        self._lru[block.block_hash] = None
        return evicted

    # -- internals -----------------------------------------------------------

    def _evict_oldest(self) -> TierBlock:
        block_hash, _ = self._lru.popitem(last=False)
        block = self._blocks.pop(block_hash)
        self._free_slots.append(block.slot)
        return block

    def _forget(self, block: TierBlock) -> None:
        if block.state is BlockState.COPYING_DOWN:
            self._num_writing -= 1
        del self._blocks[block.block_hash]
        self._lru.pop(block.block_hash, None)
        self._free_slots.append(block.slot)


class BlockRegistry:
    """The lower tiers of one worker, fastest first: host memory, then disk (either absent)."""

    def __init__(self, host: TierPool | None, disk: TierPool | None) -> None:
        self.host = host
        self.disk = disk
        self._tiers = [t for t in (host, disk) if t is not None]

    def tiers(self) -> list[TierPool]:
        return list(self._tiers)

    def find(self, block_hash: int) -> TierPool | None:
        """The fastest tier where the block is readable."""
        for tier in self._tiers:
            if tier.is_readable(block_hash):
                return tier
        return None

    def lookup_run(self, hashes: Sequence[int], start: int, limit: int) -> list[TierPool]:
        """For hashes[start:], the tier holding each, up to the first no tier can read.

        At most `limit` entries: the run of blocks an onboarding could bring back.
        """
        run: list[TierPool] = []
        for i in range(start, min(len(hashes), start + max(limit, 0))):
            tier = self.find(hashes[i])
            if tier is None:
                break
            run.append(tier)
        return run
