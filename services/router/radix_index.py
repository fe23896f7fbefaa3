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
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence


class RadixIndex:
    """Owns the block -> workers map and each worker's set of resident blocks."""

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}  # block_hash -> bitmask of worker slots
        self._worker_blocks: dict[str, set[int]] = {}
        self._slot_of: dict[str, int] = {}
        self._worker_of: list[str | None] = []  # slot -> worker id
        self._free_slots: list[int] = []

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
        bit = self._bit(worker)
        owned = self._worker_blocks[worker]
        blocks = self._blocks
        get = blocks.get
        for h in block_hashes:
            blocks[h] = get(h, 0) | bit
        owned.update(block_hashes)

    def remove(self, worker: str, block_hashes: Iterable[int]) -> None:
        """`worker` no longer holds these blocks; unknown ones are ignored."""
        owned = self._worker_blocks.get(worker)
        if not owned:
            return
        present = owned.intersection(block_hashes)
        owned -= present
        self._unset(worker, present)

    def clear(self, worker: str) -> None:
        """Drop everything `worker` holds (AllCleared); it keeps its slot."""
        owned = self._worker_blocks.get(worker)
        if owned:
            self._unset(worker, owned)
            self._worker_blocks[worker] = set()

    def _unset(self, worker: str, block_hashes: Iterable[int]) -> None:
        keep = ~(1 << self._slot_of[worker])
        blocks = self._blocks
        for h in block_hashes:
            mask = blocks[h] & keep
            if mask:
                blocks[h] = mask
            else:
                del blocks[h]

    def remove_worker(self, worker: str) -> None:
        """`worker` left: drop its blocks and recycle its slot."""
        if worker not in self._slot_of:
            return
        self.clear(worker)
        slot = self._slot_of.pop(worker)
        del self._worker_blocks[worker]
        self._worker_of[slot] = None
        self._free_slots.append(slot)

    # -- lookup -----------------------------------------------------------------

    def overlaps(self, block_hashes: Sequence[int]) -> dict[str, int]:
        """Number of leading blocks of `block_hashes` each worker holds (workers with 0 omitted)."""
        blocks = self._blocks
        result: dict[str, int] = {}
        if not block_hashes:
            return result
        active = blocks.get(block_hashes[0], 0)
        if not active:
            return result
        for depth in range(1, len(block_hashes)):
            narrowed = active & blocks.get(block_hashes[depth], 0)
            if narrowed != active:
                self._record(active ^ narrowed, depth, result)
                if not narrowed:
                    return result
                active = narrowed
        self._record(active, len(block_hashes), result)
        return result

    def _record(self, mask: int, depth: int, result: dict[str, int]) -> None:
        worker_of = self._worker_of
        while mask:
            low = mask & -mask
            worker = worker_of[low.bit_length() - 1]
            if worker is not None:
                result[worker] = depth
            mask ^= low

    def _bit(self, worker: str) -> int:
        slot = self._slot_of.get(worker)
        if slot is None:
            if self._free_slots:
                slot = self._free_slots.pop()
                self._worker_of[slot] = worker
            else:
                slot = len(self._worker_of)
                self._worker_of.append(worker)
            self._slot_of[worker] = slot
            self._worker_blocks[worker] = set()
        return 1 << slot
