"""The mocker with `--connector kvbm`: a returning conversation is onboarded, in simulated
time, from host memory and from the simulated disk, and reported per tier."""

from __future__ import annotations

from dataclasses import replace

from tandem.runtime.kv_tiers import DISK_TIER, HOST_TIER
from tandem.worker.engine import EngineOutput, EngineRequest, SamplingConfig
from tandem.worker.kv_event_sink import RecordingSink
from tandem.worker.kvbm.config import KvbmConfig
from tandem.worker.mocker import MockerConfig, MockerEngine

BASE = MockerConfig(speedup_ratio=1000.0, num_kv_blocks=64)
CONVERSATION = list(range(10_000, 10_000 + 500))  # 31 full blocks of 16


def request(rid: str, prompt: list[int]) -> EngineRequest:
    return EngineRequest(rid, prompt, SamplingConfig(max_tokens=2))


async def served(engine: MockerEngine, rid: str, prompt: list[int]) -> EngineOutput:
    outs = [out async for out in engine.generate(request(rid, prompt))]
    assert outs[-1].finish_reason == "length"
    return outs[-1]


async def returning_conversation(kvbm: KvbmConfig) -> tuple[int, MockerEngine, RecordingSink]:
    """Cached prompt tokens of a conversation's second turn after others filled the pool."""
    sink = RecordingSink()
    engine = MockerEngine(replace(BASE, kvbm=kvbm), sink)
    await engine.start()
    try:
        await served(engine, "first", CONVERSATION)
        for i in range(4):  # 4 x 31 blocks through a 64-block pool: the conversation is evicted
            await served(engine, f"other{i}", list(range(i * 1000, i * 1000 + 500)))
        last = await served(engine, "again", CONVERSATION + [1, 2, 3])
        assert last.usage is not None
        return last.usage.cached_tokens, engine, sink
    finally:
        await engine.stop()


async def test_without_tiers_the_evicted_conversation_is_recomputed() -> None:
    cached, _, _ = await returning_conversation(KvbmConfig())
    assert cached == 0


async def test_host_tier_brings_the_conversation_back() -> None:
    cached, engine, sink = await returning_conversation(
        KvbmConfig(connector="kvbm", num_host_blocks=256)
    )
    assert cached == 31 * 16
    stats = engine.kvbm_stats()
    assert stats is not None and stats.onboarded_blocks == {HOST_TIER: 31}
    assert any(kind == "stored" and tier == HOST_TIER for kind, tier, _ in sink.tier_events)


async def test_disk_tier_brings_it_back_when_host_memory_is_too_small() -> None:
    cached, engine, _ = await returning_conversation(
        KvbmConfig(
            connector="kvbm",
            kvbm_storage_tiers="hbm,host_dram,nvme_ssd",
            num_host_blocks=40,
            num_disk_blocks=1000,
        )
    )
    assert cached == 31 * 16
    stats = engine.kvbm_stats()
    assert stats is not None and stats.onboarded_blocks.get(DISK_TIER, 0) > 0


async def test_a_disk_measured_slower_than_prefill_is_declined_the_next_time() -> None:
    # 0.5 GB/s: 4.2 ms a 2 MiB block against the step model's 0.32 ms to prefill 16 tokens.
    config = KvbmConfig(
        connector="kvbm",
        kvbm_storage_tiers="hbm,host_dram,nvme_ssd",
        num_host_blocks=40,
        num_disk_blocks=1000,
    )
    engine = MockerEngine(replace(BASE, kvbm=config, kvbm_disk_bandwidth=0.5))
    await engine.start()
    try:
        cached = []
        for visit in range(2):
            await served(engine, f"first{visit}", CONVERSATION)
            for i in range(4):  # pushes the conversation off the device and out of host memory
                base = 20_000 + 10_000 * visit + i * 1000
                await served(engine, f"other{visit}.{i}", list(range(base, base + 500)))
            last = await served(engine, f"again{visit}", CONVERSATION + [1, 2, 3])
            assert last.usage is not None
            cached.append(last.usage.cached_tokens)
        stats = engine.kvbm_stats()
        assert engine.kvbm is not None and engine.kvbm.cost is not None
        token = engine.kvbm.cost.prefill_token_seconds  # fed by the engine's steps
        assert token is not None and token > 0
    finally:
        await engine.stop()
    # The first return trusted the unmeasured disk; the second knew it was slower.
    assert cached[0] == 31 * 16 and cached[1] == 0
    assert stats is not None and stats.onboarded_blocks.get(DISK_TIER, 0) > 0
    assert stats.declined_blocks == {DISK_TIER: 31}, stats
