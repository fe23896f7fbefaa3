from __future__ import annotations

from tandem.runtime.block_hash import hash_blocks
from tandem.worker.block_manager import BlockManager
from tandem.worker.kv_event_sink import RecordingSink

BS = 4


def computed(bm: BlockManager, tokens: list[int], reserve: int = 0):
    """Allocate and compute a whole prompt, like an engine that prefilled it."""
    table = bm.allocate_prompt(tokens, reserve)
    assert table is not None
    bm.mark_computed(table, tokens, len(tokens))
    return table


def stored_hashes(sink: RecordingSink) -> list[int]:
    return [h for kind, data in sink.events if kind == "stored" for h, _ in data[1]]  # type: ignore[index]


def test_prefix_reuse_skips_cached_blocks_but_never_the_last_token_block() -> None:
    sink = RecordingSink()
    bm = BlockManager(16, BS, sink)
    prompt = list(range(13))  # 3 full blocks + 1
    bm.free(computed(bm, prompt))
    again = bm.allocate_prompt(prompt)
    assert again is not None
    assert again.num_cached_tokens == 12
    assert again.hashes == hash_blocks(prompt, BS).sequence
    # Exactly 3 full blocks: the block holding the last token is recomputed.
    bm.free(again)
    exact = bm.allocate_prompt(prompt[:12])
    assert exact is not None and exact.num_cached_tokens == 8
    assert bm.prefix_cache_hit_rate == (12 + 8) / (13 + 13 + 12)


def test_stored_events_chain_parents_and_duplicates_stay_private() -> None:
    sink = RecordingSink()
    bm = BlockManager(16, BS, sink)
    prompt = list(range(8))
    a = computed(bm, prompt + [99])
    b = computed(bm, prompt + [98])  # a and b were computed concurrently: same 2 blocks
    seq = hash_blocks(prompt, BS).sequence
    local = hash_blocks(prompt, BS).local
    assert sink.events == [("stored", (None, [(seq[0], local[0]), (seq[1], local[1])]))]
    assert a.hashes == b.hashes == seq
    # b's blocks are private copies (hash taken by a's): hits come from a's blocks.
    assert b.num_cached_tokens == 8
    bm.free(a)
    bm.free(b)
    assert bm.num_cached_blocks == 2 and bm.num_active_blocks == 0


def test_decode_blocks_are_hashed_as_they_fill() -> None:
    sink = RecordingSink()
    bm = BlockManager(8, BS, sink)
    tokens = list(range(6))
    table = computed(bm, tokens)
    assert len(stored_hashes(sink)) == 1
    tokens += [50, 51]
    assert bm.ensure_capacity(table, len(tokens))
    bm.mark_computed(table, tokens, len(tokens))
    assert sink.events[-1] == (
        "stored",
        (table.hashes[0], [(table.hashes[1], hash_blocks(tokens, BS).local[1])]),
    )


def test_refcounts_keep_shared_blocks_active() -> None:
    bm = BlockManager(16, BS)
    prompt = list(range(9))
    a = computed(bm, prompt)
    b = bm.allocate_prompt(prompt)
    assert b is not None and b.block_ids[:2] == a.block_ids[:2]
    active = bm.num_active_blocks
    assert active == 3 + 1  # 2 shared + a's tail + b's tail
    bm.free(a)
    assert bm.num_active_blocks == 3  # shared blocks still held by b
    bm.free(b)
    assert bm.num_active_blocks == 0
    assert bm.num_available_blocks == 16


def test_lru_evicts_least_recently_used_first_and_reports_it() -> None:
    sink = RecordingSink()
    bm = BlockManager(6, BS, sink)
    first = list(range(0, 8))
    second = list(range(100, 108))
    bm.free(computed(bm, first))
    bm.free(computed(bm, second))
    assert bm.num_cached_blocks == 4
    # Reusing `first` makes `second` the least recently used.
    touched = bm.allocate_prompt(first + [7])
    assert touched is not None and touched.num_cached_tokens == 8
    bm.free(touched)
    s = hash_blocks(second, BS).sequence
    f = hash_blocks(first, BS).sequence
    assert bm.allocate_prompt(list(range(200, 212))) is not None  # 2 free + 1 evicted
    assert sink.events[-1] == ("removed", [s[1]])  # a sequence's tail goes before its prefix
    assert bm.allocate_prompt(list(range(300, 304))) is not None
    assert sink.events[-1] == ("removed", [s[0]])
    assert bm.match_prefix(first) == 2 and bm.match_prefix(second) == 0
    assert set(bm.resident_hashes()) == set(f)


def test_failed_allocation_changes_nothing() -> None:
    sink = RecordingSink()
    bm = BlockManager(4, BS, sink)
    keep = computed(bm, list(range(8)))
    bm.free(keep)
    held = bm.allocate_prompt(list(range(50, 58)))
    assert held is not None  # takes the 2 free blocks
    before = (
        bm.num_available_blocks,
        bm.num_cached_blocks,
        list(sink.events),
        bm.prefix_cache_hit_rate,
    )
    assert bm.allocate_prompt(list(range(300, 320))) is None
    assert not bm.ensure_capacity(held, 40)
    assert (
        bm.num_available_blocks,
        bm.num_cached_blocks,
        sink.events,
        bm.prefix_cache_hit_rate,
    ) == before
    assert len(held.block_ids) == 2


def test_clear_drops_cache_and_reports() -> None:
    sink = RecordingSink()
    bm = BlockManager(8, BS, sink)
    bm.free(computed(bm, list(range(8))))
    bm.clear()
    assert sink.events[-1] == ("cleared", None)
    assert bm.num_cached_blocks == 0 and bm.match_prefix(list(range(8))) == 0
    assert bm.resident_hashes() == []


def test_prefix_caching_disabled_hashes_nothing() -> None:
    sink = RecordingSink()
    bm = BlockManager(8, BS, sink, enable_prefix_caching=False)
    bm.free(computed(bm, list(range(8))))
    assert sink.events == [] and bm.num_cached_blocks == 0
    again = bm.allocate_prompt(list(range(9)))
    assert again is not None and again.num_cached_tokens == 0


def test_one_allocation_that_evicts_ten_blocks_reports_one_removal_in_lru_order() -> None:
    sink = RecordingSink()
    bm = BlockManager(10, BS, sink)
    old = list(range(1000, 1040))  # 10 full blocks
    bm.free(computed(bm, old))
    del sink.events[:]
    assert bm.allocate_prompt(list(range(40))) is not None  # needs all 10 blocks
    # Freed tail first, so the tail is the least recently used and goes first.
    assert sink.events == [("removed", list(reversed(hash_blocks(old, BS).sequence)))]


def test_evictions_in_a_scope_are_one_removal_reported_before_later_stores() -> None:
    sink = RecordingSink()
    bm = BlockManager(4, BS, sink)
    bm.free(computed(bm, list(range(100, 116))))  # 4 cached blocks
    del sink.events[:]
    with bm.coalesced_removals():
        a = bm.allocate_prompt(list(range(6)))  # 2 blocks: evicts 2
        b = bm.allocate_prompt(list(range(50, 56)))  # 2 more
        assert a is not None and b is not None
        assert sink.events == []  # held until the scope ends...
        bm.mark_computed(a, list(range(6)), 6)  # ...or a store would overtake them
    assert [kind for kind, _ in sink.events] == ["removed", "stored"]
    assert len(sink.events[0][1]) == 4  # type: ignore[arg-type]


def test_allocation_reuses_the_hashes_it_is_given(hash_calls: list[int]) -> None:
    sink = RecordingSink()
    bm = BlockManager(16, BS, sink)
    prompt = list(range(14))
    hashes = bm.prompt_hashes(prompt)
    assert bm.match_prefix(prompt, hashes) == 0
    table = bm.allocate_prompt(prompt, hashes=hashes)
    assert table is not None
    bm.mark_computed(table, prompt, 8)  # two prompt blocks, from the admission's hashes
    bm.mark_computed(table, prompt + [1, 2], 16)  # the third, then a decode block
    assert hash_calls == [14, 4]  # the prompt once; only the block past its full blocks again
    assert table.hashes == hash_blocks(prompt + [1, 2], BS).sequence
    assert stored_hashes(sink) == table.hashes


def test_new_blocks_come_last_freed_first_then_least_recently_used_in_one_allocation() -> None:
    sink = RecordingSink()
    bm = BlockManager(6, BS, sink)
    a = list(range(100, 108))
    table = computed(bm, a)
    assert table.block_ids == [0, 1]  # the free list hands out 0 first
    bm.free(table)  # tail first: block 1 is now the least recently used cached one
    small = bm.allocate_prompt(list(range(200, 203)))
    assert small is not None and small.block_ids == [2]
    bm.free(small)  # unhashed: back on the free list, handed out first again
    # Every free block (2, 3, 4, 5), then one eviction, in one call.
    big = bm.allocate_prompt(list(range(300, 320)))
    assert big is not None and big.block_ids == [2, 3, 4, 5, 1]
    assert sink.events[-1] == ("removed", [hash_blocks(a, BS).sequence[1]])
    assert bm.ensure_capacity(big, 24) and big.block_ids[-1] == 0
    assert bm.num_available_blocks == 0 and bm.match_prefix(a) == 0
