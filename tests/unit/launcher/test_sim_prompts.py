"""The simulator's prompt hashes: joined per trace block from a cache, always what hashing the
whole prompt gives, and a run with them repeats a run without them exactly."""

from __future__ import annotations

import pytest
from tandem.launcher.fleet_config import FleetConfig
from tandem.launcher.fleet_sim import run_fleet
from tandem.launcher.mooncake_trace import TraceRecord, prompt_token_ids
from tandem.launcher.sim_prompts import TraceHashes
from tandem.router.config import RoutingConfig
from tandem.runtime.block_hash import hash_blocks

BLOCK_TOKENS = 64  # trace block: 4 KV blocks of 16 tokens


def record(hash_ids: tuple[int, ...], input_length: int, at_s: float = 0.0) -> TraceRecord:
    return TraceRecord(at_s * 1000.0, input_length, 4, hash_ids)


@pytest.mark.parametrize(
    "hash_ids, input_length",
    [
        ((1, 2, 3), 192),  # whole trace blocks
        ((1, 2, 3), 170),  # the last one cut inside a KV block: 10 full KV blocks
        ((1, 2, 3), 144),  # the last one cut on a KV block boundary
        ((1, 2, 4), 150),  # a shared prefix, then its own block
        ((2, 1), 128),  # the same blocks behind other parents
        ((5,), 10),  # shorter than a KV block: nothing to hash
    ],
)
def test_prompt_hashes_are_the_whole_prompts(hash_ids: tuple[int, ...], input_length: int) -> None:
    hashes = TraceHashes(BLOCK_TOKENS, 16)
    for warm in [record((1, 2, 3), 192), record((1, 2), 100)]:  # fill the cache first
        hashes.prompt_hashes(warm, prompt_token_ids(warm, BLOCK_TOKENS))
    rec = record(hash_ids, input_length)
    prompt = prompt_token_ids(rec, BLOCK_TOKENS)
    for _ in range(2):  # once as found, once from the cache
        assert hashes.prompt_hashes(rec, prompt) == hash_blocks(prompt, 16)


def test_a_shared_prefix_is_hashed_once_and_evicted_entries_are_rehashed() -> None:
    hashes = TraceHashes(BLOCK_TOKENS, 16, max_entries=2)
    first, second = record((1, 2), 128), record((1, 2, 3), 192)
    hashes.prompt_hashes(first, prompt_token_ids(first, BLOCK_TOKENS))
    assert (hashes.num_hits, hashes.num_misses) == (0, 2)
    prompt = prompt_token_ids(second, BLOCK_TOKENS)
    assert hashes.prompt_hashes(second, prompt) == hash_blocks(prompt, 16)
    assert (hashes.num_hits, hashes.num_misses) == (2, 3)
    # Block 1 was the least recently used of three: gone, so hashed again, which drops
    # block 2 (hashed again too); still right.
    assert hashes.prompt_hashes(first, prompt[:128]) == hash_blocks(prompt[:128], 16)
    assert (hashes.num_hits, hashes.num_misses) == (2, 5)


def test_a_padded_record_is_left_to_the_worker_and_blocks_must_divide() -> None:
    padded = record((1,), 150)  # 3 trace blocks' worth of tokens, one hash id
    assert TraceHashes(BLOCK_TOKENS, 16).prompt_hashes(padded, prompt_token_ids(padded, 64)) is None
    with pytest.raises(ValueError, match="whole KV blocks"):
        TraceHashes(40, 16)


def test_a_run_with_the_cached_hashes_repeats_one_where_workers_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Conversations that grow turn by turn on shared system prompts, over two workers.
    records = [
        record((0, 100 + c, *range(1000 + 10 * c, 1000 + 10 * c + turn)), 64 * (2 + turn) - 7, t)
        for t, (c, turn) in enumerate((c, turn) for turn in range(4) for c in range(6))
    ]
    config = FleetConfig(
        workers=2, block_tokens=BLOCK_TOKENS, routing=RoutingConfig(router_mode="kv")
    )
    cached = run_fleet(records, config)
    assert cached._hashes is not None and cached._hashes.num_hits > 0
    monkeypatch.setattr(TraceHashes, "prompt_hashes", lambda *args: None)
    hashed = run_fleet(records, config)
    assert cached.result.cached_tokens > 0
    for name in ("ttft", "itl", "cached_tokens", "prompt_tokens", "ok"):
        assert getattr(cached.result, name) == getattr(hashed.result, name), name
    assert cached.timings == hashed.timings
