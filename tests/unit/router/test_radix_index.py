from __future__ import annotations

import random

import pytest
from tandem.router import radix_index
from tandem.router.radix_index import RadixIndex
from tandem.runtime.block_hash import sequence_hashes


def test_insert_and_overlap_counts_leading_blocks():
    index = RadixIndex()
    index.store("w1", [1, 2, 3])
    assert index.overlaps([1, 2, 3, 4]) == {"w1": 3}
    assert index.overlaps([1, 2]) == {"w1": 2}
    assert index.overlaps([9, 2, 3]) == {}  # the first block is missing
    assert index.overlaps([]) == {}


def test_shared_prefix_across_workers():
    index = RadixIndex()
    index.store("w1", [1, 2, 3, 4])
    index.store("w2", [1, 2])
    index.store("w3", [1, 2, 3, 9])
    assert index.overlaps([1, 2, 3, 4, 5]) == {"w1": 4, "w2": 2, "w3": 3}
    assert index.num_blocks == 5
    assert index.num_entries == 10


def test_remove_breaks_the_chain_and_frees_nodes():
    index = RadixIndex()
    index.store("w1", [1, 2, 3])
    index.store("w2", [1, 2, 3])
    index.remove("w1", [2])
    assert index.overlaps([1, 2, 3]) == {"w1": 1, "w2": 3}
    index.remove("w2", [1, 2, 3])
    index.remove("w1", [1, 3, 77])  # 77 never stored: ignored
    assert index.num_blocks == 0
    assert index.overlaps([1, 2, 3]) == {}


def test_clear_drops_only_that_worker():
    index = RadixIndex()
    index.store("w1", [1, 2])
    index.store("w2", [1, 2])
    index.clear("w1")
    assert index.overlaps([1, 2]) == {"w2": 2}
    index.store("w1", [1])
    assert index.overlaps([1, 2]) == {"w2": 2, "w1": 1}


def test_worker_removal_recycles_its_slot():
    index = RadixIndex()
    index.store("w1", [1, 2])
    index.store("w2", [1])
    index.remove_worker("w1")
    assert index.overlaps([1, 2]) == {"w2": 1}
    assert index.num_blocks == 1
    index.store("w3", [1, 2])  # takes w1's old slot; must not inherit anything
    assert index.overlaps([1, 2]) == {"w2": 1, "w3": 2}
    assert "w1" not in index.workers


def test_real_block_hashes():
    index = RadixIndex()
    system = list(range(64))
    a = sequence_hashes(system + [100] * 32, 16)
    b = sequence_hashes(system + [200] * 32, 16)
    index.store("w1", a)
    assert index.overlaps(b) == {"w1": 4}
    assert index.overlaps(a) == {"w1": 6}


def test_many_workers_beyond_one_machine_word():
    index = RadixIndex()
    for i in range(200):
        index.store(f"w{i}", list(range(1, 2 + i % 10)))
    result = index.overlaps(list(range(1, 20)))
    assert len(result) == 200
    assert all(result[f"w{i}"] == 1 + i % 10 for i in range(200))


class BruteForceIndex:
    """The obvious reference: a set of blocks per worker."""

    def __init__(self) -> None:
        self.blocks: dict[str, set[int]] = {}

    def store(self, w: str, hashes: list[int]) -> None:
        self.blocks.setdefault(w, set()).update(hashes)

    def remove(self, w: str, hashes: list[int]) -> None:
        self.blocks.get(w, set()).difference_update(hashes)

    def clear(self, w: str) -> None:
        self.blocks.pop(w, None)

    def overlaps(self, hashes: list[int]) -> dict[str, int]:
        out = {}
        for w, held in self.blocks.items():
            n = 0
            while n < len(hashes) and hashes[n] in held:
                n += 1
            if n:
                out[w] = n
        return out


def test_randomized_against_brute_force():
    rng = random.Random(7)
    index, ref = RadixIndex(), BruteForceIndex()
    workers = [f"w{i}" for i in range(70)]  # more than 64: multi-word masks
    # A small tree of prefixes so that workers genuinely share chains.
    chains = [[rng.randrange(1, 400) for _ in range(12)] for _ in range(25)]
    for step in range(6000):
        w = rng.choice(workers)
        chain = rng.choice(chains)
        op = rng.random()
        if op < 0.5:
            start = rng.randrange(len(chain))
            hashes = chain[start : start + rng.randrange(1, 6)]
            index.store(w, hashes)
            ref.store(w, hashes)
        elif op < 0.85:
            hashes = rng.sample(chain, rng.randrange(1, 4))
            index.remove(w, hashes)
            ref.remove(w, hashes)
        elif op < 0.93:
            index.clear(w)
            ref.clear(w)
        else:
            index.remove_worker(w)
            ref.clear(w)
        if step % 7 == 0:
            query = rng.choice(chains)[: rng.randrange(1, 13)]
            expected = ref.overlaps(query)
            assert index.overlaps(query) == expected, step
    held = set().union(*ref.blocks.values()) if ref.blocks else set()
    assert index.num_blocks == len(held)
    assert index.num_entries == sum(len(b) for b in ref.blocks.values())


def test_results_do_not_depend_on_which_masks_are_shared(monkeypatch):
    """Equal masks share one object only as a shortcut; a memo that keeps resetting (here
    after every few distinct masks) must give the same answers as the brute force."""
    monkeypatch.setattr(radix_index, "MAX_INTERNED_MASKS", 3)
    rng = random.Random(11)
    index, ref = RadixIndex(), BruteForceIndex()
    workers = [f"w{i}" for i in range(9)]
    chain = list(range(1, 41))
    for step in range(3000):
        w = rng.choice(workers)
        if rng.random() < 0.6:
            start = rng.randrange(len(chain))
            hashes = chain[start : start + rng.randrange(1, 12)]
            index.store(w, hashes)
            ref.store(w, hashes)
        else:
            hashes = rng.sample(chain, rng.randrange(1, 4))
            index.remove(w, hashes)
            ref.remove(w, hashes)
        query = chain[: rng.randrange(1, len(chain) + 1)]
        assert index.overlaps(query) == ref.overlaps(query), step


def test_long_runs_of_equal_masks_and_a_drop_at_the_last_block():
    index = RadixIndex()
    hashes = list(range(1000, 1250))
    index.store("w1", hashes)
    index.store("w2", hashes[:-1])
    index.store("w3", hashes[:1] + hashes[2:])  # a hole at depth 1
    assert index.overlaps(hashes) == {"w1": 250, "w2": 249, "w3": 1}
    assert index.overlaps(hashes + [7]) == {"w1": 250, "w2": 249, "w3": 1}


def test_a_walk_reads_its_hashes_only_up_to_where_it_ends():
    index = RadixIndex()
    index.store("w1", [1, 2, 3])
    index.store("w2", [1, 2])
    hashes = iter([1, 2, 3, 4, 5, 6])
    assert index.overlaps(hashes) == {"w1": 3, "w2": 2}
    assert next(hashes) == 5  # 4 ended the walk; nothing after it was read
    assert index.overlaps(iter([9, 1])) == {}
    assert index.overlaps(iter([])) == {}


def test_a_block_removed_and_stored_again_is_cleared_once():
    """The worker's log holds such a block twice until compacted; counts stay exact."""
    index = RadixIndex()
    index.store("w1", [1, 2, 3])
    index.store("w2", [1])
    index.remove("w1", [1])
    index.store("w1", [1])
    index.store("w1", [1, 2])  # already held: nothing changes
    assert index.num_worker_blocks("w1") == 3
    assert index.worker_blocks("w1") == {1, 2, 3}
    assert index.num_entries == 4
    index.clear("w1")
    assert index.overlaps([1, 2, 3]) == {"w2": 1}
    assert index.num_blocks == 1 and index.num_entries == 1
    assert index.worker_blocks("w1") == set()


def test_compacting_the_logs_keeps_answers_and_bounds_memory(monkeypatch):
    """Churn (each stored block evicts one) with logs compacted often: every answer equals
    the brute force's, and no worker's log outgrows twice what it holds (plus the slack)."""
    monkeypatch.setattr(radix_index, "LOG_SLACK", 4)
    rng = random.Random(3)
    index, ref = RadixIndex(), BruteForceIndex()
    workers = [f"w{i}" for i in range(5)]
    chains = [[rng.randrange(1, 300) for _ in range(10)] for _ in range(12)]
    for step in range(4000):
        w = rng.choice(workers)
        chain = rng.choice(chains)
        start = rng.randrange(len(chain))
        hashes = chain[start : start + rng.randrange(1, 5)]
        index.store(w, hashes)
        ref.store(w, hashes)
        gone = rng.sample(sorted(ref.blocks[w]), min(len(ref.blocks[w]), rng.randrange(0, 5)))
        index.remove(w, gone)
        ref.remove(w, gone)
        if step % 500 == 499:
            index.clear(w)
            ref.clear(w)
        query = rng.choice(chains)
        assert index.overlaps(query) == ref.overlaps(query), step
        for v in workers:
            held = ref.blocks.get(v, set())
            assert index.num_worker_blocks(v) == len(held), step
            holder = index._holders.get(v)  # noqa: SLF001 - the log's size is what is checked
            assert holder is None or len(holder.log) <= 2 * len(held) + 4, step
    for v in workers:
        assert index.worker_blocks(v) == ref.blocks.get(v, set())
    assert index.num_entries == sum(len(b) for b in ref.blocks.values())


# -- tiers ---------------------------------------------------------------------

HOST, DISK = "host_dram", "nvme_ssd"


def test_tiers_are_stored_and_removed_apart():
    index = RadixIndex()
    index.store("w1", [1, 2])
    index.store("w1", [2, 3, 4], HOST)
    index.store("w1", [4, 5], DISK)
    assert index.overlaps([1, 2, 3, 4, 5]) == {"w1": 2}  # the device tier alone
    assert index.tier_overlaps([1, 2, 3, 4, 5, 6]) == ({"w1": 2}, {"w1": 2}, {"w1": 1})
    assert index.worker_blocks("w1", HOST) == {2, 3, 4}
    assert index.num_worker_blocks("w1", DISK) == 2
    assert index.num_blocks == 5  # in any tier
    assert [index.num_tier_blocks(t) for t in ("hbm", HOST, DISK)] == [2, 3, 2]
    index.remove("w1", [3], HOST)
    assert index.tier_overlaps([1, 2, 3, 4]) == ({"w1": 2}, {}, {})
    index.remove("w1", [9], DISK)  # never stored: ignored
    assert index.num_worker_blocks("w1", DISK) == 2


def test_a_block_in_device_and_host_removed_from_the_device_still_counts_as_host():
    index = RadixIndex()
    index.store("w1", [1, 2, 3])
    index.store("w1", [1, 2, 3], HOST)  # offloaded while still on the device
    assert index.tier_overlaps([1, 2, 3]) == ({"w1": 3}, {}, {})  # counted in the fastest
    index.remove("w1", [2, 3])  # evicted from the device: the host copy stays
    assert index.tier_overlaps([1, 2, 3]) == ({"w1": 1}, {"w1": 2}, {})
    index.remove("w1", [1, 2, 3], HOST)
    assert index.tier_overlaps([1, 2, 3]) == ({"w1": 1}, {}, {})
    assert index.num_tier_blocks(HOST) == 0


def test_a_prefix_only_in_a_lower_tier_and_workers_side_by_side():
    index = RadixIndex()
    index.store("dev", [1, 2, 3, 4])
    index.store("host", [1, 2, 3], HOST)
    index.store("disk", [1, 2], DISK)
    index.store("mixed", [1], DISK)
    index.store("mixed", [2], HOST)  # after a disk block, a host block counts as disk
    index.store("mixed", [3])  # and a device block after a gap too
    assert index.tier_overlaps([1, 2, 3, 4, 5]) == (
        {"dev": 4},
        {"host": 3},
        {"disk": 2, "mixed": 3},
    )
    assert index.tier_overlaps([7, 1]) == ({}, {}, {})
    assert index.tier_overlaps([]) == ({}, {}, {})


def test_clear_and_remove_worker_drop_every_tier():
    index = RadixIndex()
    for w in ("w1", "w2"):
        index.store(w, [1])
        index.store(w, [1, 2], HOST)
        index.store(w, [3], DISK)
    index.clear("w1")
    assert index.tier_overlaps([1, 2, 3]) == ({"w2": 1}, {"w2": 1}, {"w2": 1})
    assert index.worker_blocks("w1", HOST) == set() and index.num_worker_blocks("w1", DISK) == 0
    index.remove_worker("w2")
    assert index.tier_overlaps([1, 2, 3]) == ({}, {}, {})
    assert (index.num_blocks, index.num_tier_blocks(HOST), index.num_tier_blocks(DISK)) == (0, 0, 0)
    index.store("w3", [1, 2], HOST)  # takes a freed slot: inherits nothing
    assert index.tier_overlaps([1, 2, 3]) == ({}, {"w3": 2}, {})


def test_a_tiered_walk_reads_its_hashes_only_up_to_where_it_ends():
    index = RadixIndex()
    index.store("w1", [1])
    index.store("w1", [2, 3], HOST)
    hashes = iter([1, 2, 3, 4, 5, 6])
    assert index.tier_overlaps(hashes) == ({"w1": 1}, {"w1": 2}, {})
    assert next(hashes) == 5


def test_unknown_tier_is_refused():
    with pytest.raises(ValueError, match="unknown KV tier"):
        RadixIndex().store("w1", [1], "tape")


class BruteForceTiers:
    """Per worker and tier, a set of blocks; a worker's run ends at the first block it holds
    in none of the tiers allowed so far."""

    def __init__(self) -> None:
        self.tiers = {t: BruteForceIndex() for t in ("hbm", HOST, DISK)}

    def overlaps(self, hashes: list[int]) -> tuple[dict[str, int], ...]:
        def run(w: str, allowed: tuple[str, ...]) -> int:
            n = 0
            while n < len(hashes) and any(
                hashes[n] in self.tiers[t].blocks.get(w, set()) for t in allowed
            ):
                n += 1
            return n

        workers = set().union(*(t.blocks for t in self.tiers.values()))
        device: dict[str, int] = {}
        host: dict[str, int] = {}
        disk: dict[str, int] = {}
        for w in workers:
            d, h, a = run(w, ("hbm",)), run(w, ("hbm", HOST)), run(w, ("hbm", HOST, DISK))
            for out, n in ((device, d), (host, h - d), (disk, a - h)):
                if n:
                    out[w] = n
        return device, host, disk


def test_tiers_randomized_against_brute_force(monkeypatch):
    monkeypatch.setattr(radix_index, "LOG_SLACK", 2)
    rng = random.Random(5)
    index, ref = RadixIndex(), BruteForceTiers()
    workers = [f"w{i}" for i in range(66)]  # more than 64: multi-word masks
    chains = [[rng.randrange(1, 200) for _ in range(10)] for _ in range(15)]
    for step in range(5000):
        w = rng.choice(workers)
        tier = rng.choice(("hbm", HOST, DISK))
        chain = rng.choice(chains)
        op = rng.random()
        if op < 0.5:
            start = rng.randrange(len(chain))
            hashes = chain[start : start + rng.randrange(1, 6)]
            index.store(w, hashes, tier)
            ref.tiers[tier].store(w, hashes)
        elif op < 0.9:
            hashes = rng.sample(chain, rng.randrange(1, 4))
            index.remove(w, hashes, tier)
            ref.tiers[tier].remove(w, hashes)
        elif op < 0.96:
            index.clear(w)
            for t in ref.tiers.values():
                t.clear(w)
        else:
            index.remove_worker(w)
            for t in ref.tiers.values():
                t.clear(w)
        if step % 5 == 0:
            query = rng.choice(chains)[: rng.randrange(1, 11)]
            assert index.tier_overlaps(query) == ref.overlaps(query), step
            assert index.overlaps(query) == ref.tiers["hbm"].overlaps(query), step
    for t, brute in ref.tiers.items():
        for w in workers:
            assert index.worker_blocks(w, t) == brute.blocks.get(w, set()), (w, t)
