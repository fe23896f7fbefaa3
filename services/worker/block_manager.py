"""Paged KV block pool with prefix caching by chained block hash.

Shared by the torch engine and the mocker so both cache, evict and report
exactly alike. Not thread-safe: the engine's scheduler thread owns it.

A block is in one of three states:
- active: referenced by at least one running/waiting sequence;
- cached: unreferenced but holding a full, hashed block (reusable by hash,
  evictable in LRU order);
- free: holds nothing.
Allocation takes free blocks first, then evicts the least recently used
cached block (reported as removed). With a tiered cache attached (`attach_tiers`,
kvbm/manager.py) the blocks it evicts may live on in host memory or on disk: the
KVBM sees each block that becomes hashed and each cached block before it is reused, and
pins the blocks it is copying down. The blocks one call evicts, or one
`coalesced_removals()` scope (the scheduler's step), are reported as one
removal listing them all, in eviction order: one KV event per pass, not per block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice, takewhile
from typing import TYPE_CHECKING

from tandem.runtime.block_hash import BLOCK_HASH_SEED, BlockHashes, hash_blocks

from .kv_event_sink import KvEventSink

if TYPE_CHECKING:
    from .kvbm.manager import Kvbm

_NO_HASHES = BlockHashes([], [])  # shared, never changed


@dataclass(slots=True)
class BlockTable:
    """The blocks one sequence holds, in order, and how many of them are hashed."""

    block_ids: list[int] = field(default_factory=list)
    # Sequence hashes of the first len(hashes) blocks (full and computed).
    hashes: list[int] = field(default_factory=list)
    # Prompt tokens found in the cache when the table was allocated.
    num_cached_tokens: int = 0
    # The prompt's full-block hashes, computed at admission: marking those blocks
    # computed takes them from here instead of hashing the prompt again.
    prompt_hashes: BlockHashes = field(default_factory=lambda: _NO_HASHES)


class _CoalescedRemovals:
    """`BlockManager.coalesced_removals()`'s scope: a class rather than a generator-based
    context manager (its generator and wrapper per use were 2 % of a simulated trace: every
    scheduler step enters one)."""

    __slots__ = ("_bm", "_outer")

    def __init__(self, bm: BlockManager) -> None:
        self._bm = bm
        self._outer: list[bool] = []  # each open scope's outer state (scopes may nest)

    def __enter__(self) -> None:
        self._outer.append(self._bm._coalescing)
        self._bm._coalescing = True

    def __exit__(self, *exc_info: object) -> None:
        bm, outer = self._bm, self._outer.pop()
        bm._coalescing = outer
        if not outer:
            bm._report_evicted()


class BlockManager:
    """Owns the pool of KV blocks: allocation, reference counts, prefix cache, LRU eviction."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        sink: KvEventSink | None = None,
        hash_seed: int = BLOCK_HASH_SEED,
        enable_prefix_caching: bool = True,
    ) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.hash_seed = hash_seed
        self.enable_prefix_caching = enable_prefix_caching
        self._sink = sink
        self._ref_counts = [0] * num_blocks
        self._block_hash: list[int | None] = [None] * num_blocks
        self._hash_to_block: dict[int, int] = {}
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._cached: OrderedDict[int, None] = OrderedDict()  # LRU order, oldest first
        self.num_prompt_tokens_seen = 0
        self.num_prompt_tokens_cached = 0
        self._evicted: list[int] = []  # hashes evicted and not reported yet
        self._coalescing = False
        self._coalesced_removals = _CoalescedRemovals(self)
        self.tiers: Kvbm | None = None  # the lower tiers, when a KVBM is attached

    def attach_tiers(self, tiers: Kvbm) -> None:
        """Put a tiered cache below this pool (before any block is allocated)."""
        self.tiers = tiers
        tiers.attach(self)

    # -- queries -------------------------------------------------------------

    @property
    def num_available_blocks(self) -> int:
        """Blocks an allocation can take now (free + evictable cached)."""
        return len(self._free) + len(self._cached)

    @property
    def num_active_blocks(self) -> int:
        return self.num_blocks - self.num_available_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def utilization(self) -> float:
        """Share of blocks holding KV (active or cached), 0..1."""
        return (self.num_blocks - len(self._free)) / self.num_blocks

    @property
    def prefix_cache_hit_rate(self) -> float:
        seen = self.num_prompt_tokens_seen
        return self.num_prompt_tokens_cached / seen if seen else 0.0

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def resident_hashes(self) -> list[int]:
        return list(self._hash_to_block)

    def prompt_hashes(self, token_ids: Sequence[int]) -> BlockHashes:
        """Hashes of the full blocks of `token_ids` (none when prefix caching is off).

        Pass them to `match_prefix` and `allocate_prompt` so one admission hashes once.
        """
        if not self.enable_prefix_caching:
            return _NO_HASHES
        return hash_blocks(token_ids, self.block_size, self.hash_seed)

    def match_prefix(self, token_ids: Sequence[int], hashes: BlockHashes | None = None) -> int:
        """Number of leading full blocks of `token_ids` resident now (no side effects)."""
        if not self.enable_prefix_caching:
            return 0
        if hashes is None:
            hashes = self.prompt_hashes(token_ids)
        # One C-level walk: an admission matches thousands of blocks of a long prompt.
        return len(list(takewhile(self._hash_to_block.__contains__, hashes.sequence)))

    # -- allocation ----------------------------------------------------------

    def allocate_prompt(
        self,
        token_ids: Sequence[int],
        reserve_tokens: int = 0,
        hashes: BlockHashes | None = None,
    ) -> BlockTable | None:
        """Blocks for a prompt (+ `reserve_tokens` more), reusing cached prefix blocks.

        `hashes`: `prompt_hashes(token_ids)` when the caller has them already.
        Returns None, changing nothing, when not enough blocks are available.
        The block holding the last prompt token is never taken from the cache,
        so the engine always computes at least one token (it needs its logits).
        """
        bs = self.block_size
        if hashes is None:
            hashes = self.prompt_hashes(token_ids)
        reusable = (len(token_ids) - 1) // bs  # blocks strictly before the last token's block
        # The leading blocks resident now (a C-level walk, as in match_prefix).
        resident = self._hash_to_block
        hit_ids = list(
            map(
                resident.__getitem__,
                takewhile(resident.__contains__, islice(hashes.sequence, reusable)),
            )
        )
        num_new = self.blocks_for(len(token_ids) + reserve_tokens) - len(hit_ids)
        # Cached hits that are currently evictable stop being available once taken.
        ref_counts = self._ref_counts
        hits_from_cache = sum(1 for b in hit_ids if ref_counts[b] == 0)
        if num_new > self.num_available_blocks - hits_from_cache:
            return None
        for block_id in hit_ids:
            self._take(block_id)
        table = BlockTable(
            block_ids=hit_ids + self._take_new(num_new),
            hashes=hashes.sequence[: len(hit_ids)],
            num_cached_tokens=len(hit_ids) * bs,
            prompt_hashes=hashes,
        )
        if not self._coalescing:
            self._report_evicted()
        self.num_prompt_tokens_seen += len(token_ids)
        self.num_prompt_tokens_cached += table.num_cached_tokens
        return table

    def ensure_capacity(self, table: BlockTable, num_tokens: int) -> bool:
        """Grow `table` to hold `num_tokens` tokens; False (unchanged) if blocks ran out."""
        need = self.blocks_for(num_tokens) - len(table.block_ids)
        if need <= 0:
            return True
        if need > self.num_available_blocks:
            return False
        table.block_ids += self._take_new(need)
        if not self._coalescing:
            self._report_evicted()
        return True

    def mark_computed(self, table: BlockTable, token_ids: Sequence[int], num_computed: int) -> None:
        """Hash and publish blocks that became full now that `num_computed` tokens have KV.

        `token_ids` is the sequence's whole token list (prompt + output so far).
        """
        bs = self.block_size
        start = len(table.hashes)
        end = min(num_computed, len(token_ids)) // bs
        if end <= start or not self.enable_prefix_caching:  # most steps: no block filled up
            return
        local, sequence = self._block_hashes(table, token_ids, start, end)
        hashes = table.hashes
        parent = hashes[-1] if hashes else None  # the hash before the first new block
        hashes += sequence
        # Runs [first, last) of consecutive newly resident blocks (indices into `sequence`).
        runs: list[tuple[int, int]] = []
        first = -1  # where the current run began, -1 outside one
        resident, block_hash, tiers = self._hash_to_block, self._block_hash, self.tiers
        # One pass per block of every prefill chunk: locals only, no calls but the tiers'.
        block_ids = table.block_ids[start:end]
        for j, (seq_hash, block_id) in enumerate(zip(sequence, block_ids, strict=True)):
            if seq_hash in resident:
                if first >= 0:  # an identical block is resident; this copy stays private
                    runs.append((first, j))
                    first = -1
                continue
            block_hash[block_id] = seq_hash
            resident[seq_hash] = block_id
            if tiers is not None:
                tiers.device_stored(block_id, seq_hash, local[j], sequence[j - 1] if j else parent)
            if first < 0:
                first = j
        if first >= 0:
            runs.append((first, len(sequence)))
        if self._sink is not None:
            self._report_evicted()  # evictions before these stores are reported before them
            for a, b in runs:
                run = list(zip(sequence[a:b], local[a:b], strict=True))
                self._sink.stored(sequence[a - 1] if a else parent, run)

    def free(self, table: BlockTable) -> None:
        """Release a sequence's blocks; hashed ones stay cached for reuse."""
        # Free in reverse so a sequence's tail is evicted before its prefix.
        for block_id in reversed(table.block_ids):
            self.unpin(block_id)
        table.block_ids.clear()
        table.hashes.clear()
        table.prompt_hashes = _NO_HASHES

    def pin(self, block_id: int) -> None:
        """Hold `block_id` (one more reference): never evicted or reused until `unpin`."""
        self._take(block_id)

    def unpin(self, block_id: int) -> None:
        """Drop one reference; at none a hashed block stays cached, any other is free."""
        self._ref_counts[block_id] -= 1
        if self._ref_counts[block_id] == 0:
            if self._block_hash[block_id] is not None:
                self._cached[block_id] = None
            else:
                self._free.append(block_id)

    def coalesced_removals(self) -> _CoalescedRemovals:
        """Report the blocks evicted inside this scope (a `with` block) as one removal, at
        its end."""
        return self._coalesced_removals

    def clear(self) -> None:
        """Drop every cached block (active ones must already be freed)."""
        self._report_evicted()  # evictions before the clear are reported before it
        if self.tiers is not None:
            self.tiers.device_cleared()
        for block_id in list(self._cached):
            self._forget(block_id)
            self._free.append(block_id)
        self._cached.clear()
        if self._sink is not None:
            self._sink.cleared()

    # -- internals -----------------------------------------------------------

    def _take(self, block_id: int) -> None:
        if self._ref_counts[block_id] == 0:
            self._cached.pop(block_id, None)
        self._ref_counts[block_id] += 1

    def _take_new(self, count: int) -> list[int]:
        """`count` blocks, each with one reference: free ones first (last freed first), then
        the least recently used cached ones, evicted (the caller checked there are enough)."""
        free = self._free
        num_free = min(count, len(free))
        # What popping `num_free` times would return, in one slice.
        taken = free[len(free) - num_free :]
        taken.reverse()
        del free[len(free) - num_free :]
        ref_counts = self._ref_counts
        for block_id in taken:
            ref_counts[block_id] = 1
        if num_free < count:
            cached, tiers = self._cached, self.tiers
            for _ in range(count - num_free):  # evictions, least recently used first
                block_id, _ = cached.popitem(last=False)
                if tiers is not None:
                    tiers.device_evicting(block_id)  # a dirty block is written down first
                evicted = self._forget(block_id)
                if evicted is not None:
                    self._evicted.append(evicted)
                ref_counts[block_id] = 1
                taken.append(block_id)
        return taken

    def _report_evicted(self) -> None:
        """Report the blocks evicted and not reported yet as one removal."""
        if self._evicted:
            evicted, self._evicted = self._evicted, []
            if self._sink is not None:
                self._sink.removed(evicted)

    def _block_hashes(
        self, table: BlockTable, token_ids: Sequence[int], start: int, end: int
    ) -> BlockHashes:
        """Hashes of blocks [start, end) of `token_ids` (`start` = len(table.hashes)): the
        prompt's from admission, the rest hashed now, chained on the block before them."""
        known = table.prompt_hashes
        num_known = max(min(len(known.sequence), end), start)
        local, sequence = known.local[start:num_known], known.sequence[start:num_known]
        if num_known == end:
            return BlockHashes(local, sequence)
        bs = self.block_size
        parent = sequence[-1] if sequence else table.hashes[-1] if table.hashes else None
        rest = hash_blocks(token_ids[num_known * bs : end * bs], bs, self.hash_seed, parent)
        return BlockHashes(local + rest.local, sequence + rest.sequence)

    def _forget(self, block_id: int) -> int | None:
        h = self._block_hash[block_id]
        self._block_hash[block_id] = None
        if h is not None and self._hash_to_block.get(h) == block_id:
            del self._hash_to_block[h]
        return h
