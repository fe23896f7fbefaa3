"""The torch engine with `--connector kvbm`: conversations evicted from its KV pool come back
from host memory and from disk token-identical, read back instead of recomputed; block
files survive a restart and a corrupt one is dropped, never attended to.

Greedy output of the first turn (computed from scratch) is the reference: a returning
prefix that came back with a wrong byte would change it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tandem.runtime.kv_tiers import DISK_TIER, HOST_TIER
from tandem.worker.kvbm.config import KvbmConfig
from tandem.worker.torch_engine import TorchEngine

from tests.support.torch_engine import collect, random_prompt, started_engine

pytestmark = pytest.mark.slow

POOL = 32  # blocks of 16: one 200-token conversation is 13 of them
CONVERSATION = random_prompt(200, seed=11)
OTHERS = [random_prompt(200, seed=20 + i) for i in range(3)]
RETURNING_BLOCKS = (len(CONVERSATION) - 1) // 16  # every full block before the last token's


async def greedy(engine: TorchEngine, prompt: list[int], rid: str) -> tuple[list[int], int]:
    tokens, outs = await collect(engine, prompt, rid, max_tokens=4, ignore_eos=True)
    usage = outs[-1].usage
    assert usage is not None
    return tokens, usage.cached_tokens


async def first_turn_then_others(engine: TorchEngine) -> list[int]:
    """The conversation's greedy tokens, computed from scratch; then others evict it."""
    tokens, cached = await greedy(engine, CONVERSATION, "turn1")
    assert cached == 0
    for i, other in enumerate(OTHERS):
        await greedy(engine, other, f"other{i}")
    return tokens


def kvbm(tmp_path: Path | None = None, **kw: object) -> KvbmConfig:
    if tmp_path is not None:
        kw.setdefault("kvbm_storage_tiers", "hbm,host_dram,nvme_ssd")
        kw.setdefault("kvbm_nvme_path", str(tmp_path))
    return KvbmConfig(connector="kvbm", **kw)  # type: ignore[arg-type]


async def test_conversation_evicted_to_host_memory_returns_identical_and_read_back() -> None:
    async with started_engine(num_kv_blocks=POOL, kvbm=kvbm(num_host_blocks=200)) as (engine, _):
        reference = await first_turn_then_others(engine)
        tokens, cached = await greedy(engine, CONVERSATION, "turn2")
        assert tokens == reference
        assert cached == RETURNING_BLOCKS * 16
        stats = engine.kvbm_stats()
        assert stats is not None and stats.onboarded_blocks == {HOST_TIER: RETURNING_BLOCKS}


async def test_conversation_evicted_to_disk_returns_after_a_restart_minus_a_corrupt_block(
    tmp_path: Path,
) -> None:
    config = kvbm(tmp_path, num_host_blocks=16)  # host memory holds less than one conversation
    async with started_engine(num_kv_blocks=POOL, kvbm=config) as (engine, _):
        reference = await first_turn_then_others(engine)
        tokens, cached = await greedy(engine, CONVERSATION, "turn2")
        assert tokens == reference and cached == RETURNING_BLOCKS * 16
        stats = engine.kvbm_stats()
        assert stats is not None and stats.onboarded_blocks.get(DISK_TIER, 0) > 0

    # A new process on the same directory: its disk tier is reloaded and announced...
    async with started_engine(num_kv_blocks=POOL, kvbm=config) as (engine, sink):
        announced = {
            h
            for kind, tier, data in sink.tier_events
            if kind == "stored" and tier == DISK_TIER
            for h, _ in data[1]
        }
        hashes = engine._parts.scheduler.block_manager.prompt_hashes(CONVERSATION).sequence  # type: ignore[union-attr]
        assert set(hashes[:RETURNING_BLOCKS]) <= announced
        # ...and a block file damaged meanwhile is found out when read, never attended to.
        victim = tmp_path / f"{hashes[5]:016x}.kvb"
        data = bytearray(victim.read_bytes())
        data[-100] ^= 0xFF  # one flipped byte in the payload
        victim.write_bytes(bytes(data))
        tokens, cached = await greedy(engine, CONVERSATION, "after-restart")
        assert tokens == reference
        assert cached == 5 * 16  # blocks 0-4 read back from disk, 5 onwards recomputed
        stats = engine.kvbm_stats()
        assert stats is not None and stats.failed_reads == 1
        assert stats.onboarded_blocks == {DISK_TIER: RETURNING_BLOCKS - 1}
