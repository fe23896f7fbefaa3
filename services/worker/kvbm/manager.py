"""The tiered KV cache's policy: which device blocks go down to host memory and disk, when,
and how a request's prefix found there comes back up.

The device pool stays the engine's `BlockManager`; this sits beside it and sees what it
does through three hooks: a block became full and hashed (`device_stored`), a cached block
is about to be reused for other tokens (`device_evicting`), the pool was cleared.

Down. A device block whose hash no lower tier holds is *dirty*. Dirty blocks are written
to host memory oldest first, off the engine step (the copier's thread; the device block is
pinned until its bytes are out), once more than `--kvbm-offload-ratio` of the pool is dirty:
at 0 every block is written as soon as it is full (write-through), at 1 only when the pool
evicts it, and then the step waits for that one copy (host memory, never disk). A block
that lands in host memory is written on to disk (write-through again, so a host eviction
never waits for a disk write), or only once it was reused `--kvbm-disk-min-uses` times.
Every tier evicts LRU within its own capacity and reports what it holds as KV events with
its `tier`, so routers know which worker holds a prefix where.

Up. At admission the scheduler asks how many blocks after the device-cached prefix the
lower tiers can read (`lookup`), allocates device blocks for the whole prompt as usual and
hands those to `onboard`: each is copied up (host) or read back and verified (disk) on the
copier's thread while other sequences keep stepping; `poll`, at the start of every step,
runs what completed, and the scheduler resumes the request from the first block that did
not come back. `lookup` stops at the first block held by a tier that copies slower than the
engine recomputes (onboard_cost.py, both measured here): from there the prompt is
recomputed, as after a block that failed to come back. Not thread-safe: the engine's step
loop owns it, as it owns the BlockManager.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tandem.runtime.kv_tiers import DEVICE_TIER, DISK_TIER, HOST_TIER

from ..kv_event_sink import KvEventSink
from .config import KvbmConfig
from .copier import ONBOARD_KINDS, BlockCopier, CopyKind, CopyOp
from .onboard_cost import OnboardCost
from .registry import BlockRegistry, BlockState, TierBlock, TierPool

if TYPE_CHECKING:
    from ..block_manager import BlockManager

MAX_OFFLOADS_IN_FLIGHT = 64
"""Device blocks pinned by copies down at once, at most (and at most 1/8 of the pool)."""

_ONBOARD_TIER = {CopyKind.HOST_TO_DEVICE: HOST_TIER, CopyKind.DISK_TO_DEVICE: DISK_TIER}


@dataclass(slots=True)
class _Block:
    """A hashed device block's identity: what a lower tier stores beside its bytes."""

    block_hash: int
    local_hash: int
    parent_hash: int | None


@dataclass(slots=True)
class KvbmStats:
    """Totals since start, read at scrape time (plain ints: the engine thread writes them)."""

    offloaded_blocks: dict[str, int] = field(default_factory=dict)  # by tier written to
    onboarded_blocks: dict[str, int] = field(default_factory=dict)  # by tier read from
    # Full prompt blocks admitted, and those found per tier (device hits included).
    lookup_blocks: int = 0
    hit_blocks: dict[str, int] = field(default_factory=dict)
    offloads_skipped: int = 0  # a lower tier had no room (every block busy)
    declined_blocks: dict[str, int] = field(default_factory=dict)  # recomputed, by slow tier
    failed_reads: int = 0  # a block file was torn, truncated or foreign: dropped
    copies: dict[str, int] = field(default_factory=dict)  # by copy kind
    copy_seconds: dict[str, float] = field(default_factory=dict)  # submit to completion
    utilization: dict[str, float] = field(default_factory=dict)  # by tier, 0..1
    bytes_per_block: int = 0


@dataclass(slots=True, eq=False)
class _Onboarding:
    """One request's blocks being copied up; `done(n)` once all are back, n leading ones ok."""

    ok: list[bool]
    remaining: int
    done: Callable[[int], None]


class Kvbm:
    """Owns the lower tiers' registry, the dirty list and the copies in flight."""

    def __init__(
        self,
        config: KvbmConfig,
        registry: BlockRegistry,
        copier: BlockCopier,
        bytes_per_block: int,
        sink: KvEventSink | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.copier = copier
        self.bytes_per_block = bytes_per_block
        self._sink = sink
        self._device: BlockManager | None = None
        self._max_dirty = 0
        self._max_in_flight = MAX_OFFLOADS_IN_FLIGHT
        self._dirty: OrderedDict[int, _Block] = (
            OrderedDict()
        )  # device block id -> block, oldest first
        self._handlers: dict[int, tuple[CopyOp, Callable[[bool], None], str, float]] = {}
        self._num_offloading = 0
        self._stats = KvbmStats(bytes_per_block=bytes_per_block)
        self.cost: OnboardCost | None = None  # once attached (it needs the block size)

    # -- wiring ----------------------------------------------------------------

    def attach(self, device: BlockManager) -> None:
        """Become `device`'s lower tiers (the BlockManager calls this)."""
        self._device = device
        self._max_dirty = int(self.config.kvbm_offload_ratio * device.num_blocks)
        self._max_in_flight = max(1, min(MAX_OFFLOADS_IN_FLIGHT, device.num_blocks // 8))
        self.cost = OnboardCost(device.block_size)

    def announce_disk(self, found: Sequence[tuple[int, int, int | None]]) -> int:
        """Adopt block files a previous run left (hash, local hash, parent), report them held
        on disk; returns how many were kept (the tier's capacity may take fewer)."""
        disk = self.registry.disk
        if disk is None:
            return 0
        kept: list[TierBlock] = []
        for block_hash, local_hash, parent in found:
            block = TierBlock(block_hash, local_hash, parent, slot=-1, state=BlockState.RESIDENT)
            for victim in disk.adopt(block):
                self.copier.submit(CopyOp(CopyKind.DISK_DELETE, block_hash=victim.block_hash))
                if victim in kept:
                    kept.remove(victim)
            kept.append(block)
        for block in kept:
            self._emit_stored(DISK_TIER, block.block_hash, block.local_hash, block.parent_hash)
        return len(kept)

    def close(self) -> None:
        self.copier.close()

    # -- device hooks (the BlockManager's) ---------------------------------------

    def device_stored(
        self, block_id: int, block_hash: int, local_hash: int, parent_hash: int | None
    ) -> None:
        """Device block `block_id` became full and hashed."""
        host = self.registry.host
        if host is not None and block_hash not in host:
            self._dirty[block_id] = _Block(block_hash, local_hash, parent_hash)

    def device_evicting(self, block_id: int) -> None:
        """The device pool reuses cached block `block_id` now: a dirty one is written down
        first (the step waits for this one copy)."""
        block = self._dirty.pop(block_id, None)
        if block is not None:
            self._offload(block_id, block, synchronous=True)

    def device_cleared(self) -> None:
        self._dirty.clear()

    # -- the step loop's calls -------------------------------------------------------

    @property
    def has_completed(self) -> bool:
        """Copies finished that `poll` has not run yet (read from any thread)."""
        return self.copier.has_completed

    @property
    def busy(self) -> bool:
        """Copies are in flight (they may free device blocks or finish an onboarding)."""
        return bool(self._handlers)

    def poll(self) -> None:
        """Run what finished since the last call, then start the copies down that are due."""
        now = time.perf_counter()
        for op in self.copier.completed():
            entry = self._handlers.pop(id(op), None)
            if entry is None:
                continue
            _, handler, kind, submitted = entry
            if op.ok and op.kind in ONBOARD_KINDS and self.cost is not None:
                self.cost.copied(_ONBOARD_TIER[op.kind], op.seconds)
            self._stats.copies[kind] = self._stats.copies.get(kind, 0) + 1
            self._stats.copy_seconds[kind] = self._stats.copy_seconds.get(kind, 0.0) + (
                now - submitted
            )
            handler(op.ok)
        self._pump()

    def take_stall_seconds(self) -> float:
        """Simulated time the last step spent in synchronous copies (the mocker adds it)."""
        return self.copier.take_stall_seconds()

    def prefilled(self, num_tokens: int, seconds: float) -> None:
        """An engine step that prefilled `num_tokens` tokens took `seconds` (the engine reports
        every step: the recompute side of `lookup`'s choice)."""
        if self.cost is not None:
            self.cost.prefilled(num_tokens, seconds)

    def lookup(self, hashes: Sequence[int], start: int, limit: int) -> int:
        """How many blocks of `hashes[start:]` (at most `limit`) the lower tiers should bring
        back: up to the first held by a tier slower than recomputing (counted declined)."""
        if limit <= 0:
            return 0
        pools = self.registry.lookup_run(hashes, start, limit)
        cost = self.cost
        if cost is not None:
            for i, pool in enumerate(pools):
                if not cost.worth_onboarding(pool.tier):
                    declined = self._stats.declined_blocks
                    declined[pool.tier] = declined.get(pool.tier, 0) + len(pools) - i
                    return i
        return len(pools)

    def count_admission(self, num_blocks: int, device_hits: int) -> None:
        """An admitted prompt of `num_blocks` full blocks found `device_hits` on the device
        (lower-tier hits are counted as they come back)."""
        s = self._stats
        s.lookup_blocks += num_blocks
        s.hit_blocks[DEVICE_TIER] = s.hit_blocks.get(DEVICE_TIER, 0) + device_hits

    def onboard(
        self,
        hashes: Sequence[int],
        start: int,
        count: int,
        device_block_ids: Sequence[int],
        done: Callable[[int], None],
    ) -> int:
        """Copy blocks `hashes[start:start + count]` up into `device_block_ids` (same indices);
        returns how many copies started (0: none, `done` is never called)."""
        pools = self.registry.lookup_run(hashes, start, count)
        if not pools:
            return 0
        job = _Onboarding([False] * len(pools), len(pools), done)
        for i, pool in enumerate(pools):
            block_hash = hashes[start + i]
            block = pool.acquire(block_hash)
            device_block = device_block_ids[start + i]
            if pool.tier == HOST_TIER:
                op = CopyOp(
                    CopyKind.HOST_TO_DEVICE,
                    host_slot=block.slot,
                    device_block=device_block,
                    block_hash=block_hash,
                )
            else:
                op = CopyOp(
                    CopyKind.DISK_TO_DEVICE, block_hash=block_hash, device_block=device_block
                )
            self._submit(op, f"onboard_{pool.tier}", self._onboard_handler(job, i, pool, block))
        return len(pools)

    def stats(self) -> KvbmStats:
        """A copy of the totals, with each tier's utilization now."""
        s = self._stats
        util = dict(s.utilization)
        if self._device is not None:
            util[DEVICE_TIER] = self._device.utilization
        for pool in self.registry.tiers():
            util[pool.tier] = pool.utilization
        return KvbmStats(
            offloaded_blocks=dict(s.offloaded_blocks),
            onboarded_blocks=dict(s.onboarded_blocks),
            lookup_blocks=s.lookup_blocks,
            hit_blocks=dict(s.hit_blocks),
            offloads_skipped=s.offloads_skipped,
            declined_blocks=dict(s.declined_blocks),
            failed_reads=s.failed_reads,
            copies=dict(s.copies),
            copy_seconds=dict(s.copy_seconds),
            utilization=util,
            bytes_per_block=s.bytes_per_block,
        )

    # -- down -------------------------------------------------------------------

    def _pump(self) -> None:
        """Start copies down while more of the pool is dirty than the offload ratio allows."""
        dirty = self._dirty
        while dirty and len(dirty) > self._max_dirty and self._num_offloading < self._max_in_flight:
            block_id, block = dirty.popitem(last=False)
            self._offload(block_id, block, synchronous=False)

    def _offload(self, block_id: int, block: _Block, synchronous: bool) -> None:
        host = self.registry.host
        assert host is not None and self._device is not None
        if block.block_hash in host:
            return
        reserved = host.reserve(block.block_hash, block.local_hash, block.parent_hash)
        if reserved is None:
            self._stats.offloads_skipped += 1
            return
        slot, victims = reserved[0].slot, reserved[1]
        self._emit_removed(HOST_TIER, victims)
        op = CopyOp(
            CopyKind.DEVICE_TO_HOST,
            device_block=block_id,
            host_slot=slot,
            block_hash=block.block_hash,
        )
        if synchronous:
            self.copier.copy_now(op)
            self._landed_in_host(block, op.ok)
            return
        device = self._device
        device.pin(block_id)
        self._num_offloading += 1

        def landed(ok: bool) -> None:
            self._num_offloading -= 1
            device.unpin(block_id)
            self._landed_in_host(block, ok)

        self._submit(op, "offload_host_dram", landed)

    def _landed_in_host(self, block: _Block, ok: bool) -> None:
        host = self.registry.host
        assert host is not None
        if not ok:
            host.abort(block.block_hash)
            return
        host.commit(block.block_hash)
        self._count(self._stats.offloaded_blocks, HOST_TIER)
        self._emit_stored(HOST_TIER, block.block_hash, block.local_hash, block.parent_hash)
        if self.config.kvbm_disk_min_uses == 0:
            self._write_to_disk(block)

    def _write_to_disk(self, block: _Block) -> None:
        host, disk = self.registry.host, self.registry.disk
        if disk is None or host is None or block.block_hash in disk:
            return
        reserved = disk.reserve(block.block_hash, block.local_hash, block.parent_hash)
        if reserved is None:
            self._stats.offloads_skipped += 1
            return
        victims = reserved[1]
        for victim in victims:
            self.copier.submit(CopyOp(CopyKind.DISK_DELETE, block_hash=victim.block_hash))
        self._emit_removed(DISK_TIER, victims)
        source = host.acquire(block.block_hash)  # not evicted from host while it is read
        op = CopyOp(
            CopyKind.HOST_TO_DISK,
            host_slot=source.slot,
            block_hash=block.block_hash,
            local_hash=block.local_hash,
            parent_hash=block.parent_hash,
        )

        def written(ok: bool) -> None:
            host.release(block.block_hash)
            if ok:
                disk.commit(block.block_hash)
                self._count(self._stats.offloaded_blocks, DISK_TIER)
                self._emit_stored(DISK_TIER, block.block_hash, block.local_hash, block.parent_hash)
            else:
                disk.abort(block.block_hash)

        self._submit(op, "offload_nvme_ssd", written)

    # -- up ---------------------------------------------------------------------

    def _onboard_handler(
        self, job: _Onboarding, index: int, pool: TierPool, block: TierBlock
    ) -> Callable[[bool], None]:
        def copied(ok: bool) -> None:
            pool.release(block.block_hash)
            if ok:
                block.uses += 1
                self._count(self._stats.onboarded_blocks, pool.tier)
                self._count(self._stats.hit_blocks, pool.tier)
                min_uses = self.config.kvbm_disk_min_uses
                if pool.tier == HOST_TIER and min_uses and block.uses == min_uses:
                    self._write_to_disk(
                        _Block(block.block_hash, block.local_hash, block.parent_hash)
                    )
            else:
                if pool.tier == DISK_TIER:
                    self._stats.failed_reads += 1
                dropped = pool.drop(block.block_hash)
                if dropped is not None:
                    self._emit_removed(pool.tier, [dropped])
            job.ok[index] = ok
            job.remaining -= 1
            if job.remaining == 0:
                leading = next((i for i, good in enumerate(job.ok) if not good), len(job.ok))
                job.done(leading)

        return copied

    # -- internals --------------------------------------------------------------

    def _submit(self, op: CopyOp, kind: str, handler: Callable[[bool], None]) -> None:
        self._handlers[id(op)] = (op, handler, kind, time.perf_counter())
        self.copier.submit(op)

    @staticmethod
    def _count(counts: dict[str, int], tier: str) -> None:
        counts[tier] = counts.get(tier, 0) + 1

    def _emit_stored(
        self, tier: str, block_hash: int, local_hash: int, parent_hash: int | None
    ) -> None:
        if self._sink is not None:
            self._sink.stored(parent_hash, [(block_hash, local_hash)], tier)

    def _emit_removed(self, tier: str, blocks: Sequence[TierBlock]) -> None:
        if blocks and self._sink is not None:
            self._sink.removed([b.block_hash for b in blocks], tier)
