"""The lower tiers' block registry: capacity, LRU order, busy blocks, lookups across tiers."""

from __future__ import annotations

import pytest
from tandem.runtime.kv_tiers import DISK_TIER, HOST_TIER
from tandem.worker.kvbm.registry import BlockRegistry, BlockState, TierBlock, TierPool


def put(pool: TierPool, h: int) -> list[int]:
    """Reserve and commit block `h`; the hashes evicted for it."""
    reserved = pool.reserve(h, h + 1000, None)
    assert reserved is not None
    block, evicted = reserved
    assert block.state is BlockState.COPYING_DOWN and not pool.is_readable(h)
    pool.commit(h)
    return [b.block_hash for b in evicted]


def test_capacity_holds_under_a_flood_and_the_newest_blocks_stay() -> None:
    pool = TierPool(HOST_TIER, 8)
    evicted: list[int] = []
    for h in range(1000):
        evicted += put(pool, h)
        assert len(pool) <= 8
    assert evicted == list(range(992))  # oldest first, each exactly once
    assert sorted(pool.hashes()) == list(range(992, 1000))
    assert sorted(pool.get(h).slot for h in pool.hashes()) == list(range(8))  # type: ignore[union-attr]
    assert pool.utilization == 1.0 and pool.num_resident == 8


def test_a_read_makes_a_block_the_newest() -> None:
    pool = TierPool(HOST_TIER, 3)
    for h in (1, 2, 3):
        put(pool, h)
    pool.acquire(1)
    pool.release(1)
    assert put(pool, 4) == [2]
    assert put(pool, 5) == [3]
    assert put(pool, 6) == [1]


def test_busy_blocks_are_never_evicted() -> None:
    pool = TierPool(HOST_TIER, 2)
    assert pool.reserve(1, 11, None) is not None  # being written: COPYING_DOWN
    put(pool, 2)
    block = pool.acquire(2)  # being read: COPYING_UP
    assert block.state is BlockState.COPYING_UP and pool.is_readable(2)
    assert pool.num_resident == 1 and pool.utilization == 1.0
    assert pool.reserve(3, 13, None) is None  # every block busy: nothing changes
    assert sorted(pool.hashes()) == [1, 2] and 3 not in pool
    pool.acquire(2)
    pool.release(2)
    assert pool.reserve(3, 13, None) is None  # still one reader
    pool.release(2)
    assert pool.get(2).state is BlockState.RESIDENT  # type: ignore[union-attr]
    reserved = pool.reserve(3, 13, 2)
    assert reserved is not None
    new, evicted = reserved
    assert [b.block_hash for b in evicted] == [2] and evicted[0].slot == new.slot
    assert new.parent_hash == 2 and 1 in pool


def test_reserving_a_present_hash_changes_nothing() -> None:
    pool = TierPool(HOST_TIER, 2)
    put(pool, 1)
    assert pool.reserve(1, 11, None) is None
    assert len(pool) == 1


def test_abort_and_drop_free_the_slot() -> None:
    pool = TierPool(DISK_TIER, 1)
    pool.reserve(1, 11, None)
    pool.abort(1)
    assert 1 not in pool and len(pool) == 0
    put(pool, 2)
    pool.acquire(2)
    assert pool.drop(2) is not None and len(pool) == 0
    pool.release(2)  # the reader of a dropped block finishes: a no-op
    pool.reserve(2, 12, None)
    pool.release(2)  # and it leaves a block reserved again under that hash alone
    assert pool.get(2).state is BlockState.COPYING_DOWN  # type: ignore[union-attr]
    assert pool.num_resident == 0
    pool.drop(2)
    assert pool.num_resident == 0 and len(pool) == 0 and pool.drop(99) is None
    put(pool, 3)
    assert pool.num_resident == 1


def test_only_readable_blocks_can_be_acquired() -> None:
    pool = TierPool(HOST_TIER, 2)
    pool.reserve(1, 11, None)
    with pytest.raises(KeyError):
        pool.acquire(1)
    with pytest.raises(KeyError):
        pool.acquire(2)
    pool.commit(1)
    with pytest.raises(ValueError):  # committed twice
        pool.commit(1)
    with pytest.raises(ValueError):  # a resident block's copy down cannot fail
        pool.abort(1)


def test_adopt_takes_found_blocks_within_capacity() -> None:
    pool = TierPool(DISK_TIER, 2)
    evicted = []
    for h in (1, 2, 3):
        evicted += pool.adopt(TierBlock(h, h, None, slot=-1, state=BlockState.RESIDENT))
    assert [b.block_hash for b in evicted] == [1]
    assert sorted(pool.hashes()) == [2, 3] and pool.num_evictable == 2
    assert pool.adopt(TierBlock(3, 3, None, slot=-1, state=BlockState.RESIDENT)) == []


def test_the_registry_finds_the_fastest_readable_tier_and_stops_at_a_gap() -> None:
    host, disk = TierPool(HOST_TIER, 4), TierPool(DISK_TIER, 4)
    registry = BlockRegistry(host, disk)
    for h in (1, 2):
        put(host, h)
    for h in (2, 3, 5):
        put(disk, h)
    host.reserve(4, 14, None)  # not readable yet
    assert registry.find(2) is host and registry.find(3) is disk and registry.find(4) is None
    hashes = [0, 1, 2, 3, 4, 5]
    assert [t.tier for t in registry.lookup_run(hashes, 1, 10)] == [HOST_TIER, HOST_TIER, DISK_TIER]
    assert len(registry.lookup_run(hashes, 1, 2)) == 2
    assert registry.lookup_run(hashes, 0, 10) == []
    assert registry.lookup_run(hashes, 5, 10) == [disk]
    only_disk = BlockRegistry(None, disk)
    assert only_disk.tiers() == [disk] and only_disk.find(1) is None
