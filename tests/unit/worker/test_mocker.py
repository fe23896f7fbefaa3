from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from tandem.runtime.block_hash import sequence_hashes
from tandem.worker.engine import EngineError, EngineOutput, EngineRequest, SamplingConfig
from tandem.worker.kv_event_sink import RecordingSink
from tandem.worker.mocker import MockerConfig, MockerEngine

FAST = MockerConfig(speedup_ratio=1000.0, num_kv_blocks=256)


def request(rid: str, prompt: list[int], **sampling: object) -> EngineRequest:
    return EngineRequest(rid, prompt, SamplingConfig(**sampling))  # type: ignore[arg-type]


async def run(engine: MockerEngine, req: EngineRequest) -> list[EngineOutput]:
    return [out async for out in engine.generate(req)]


def tokens_of(outs: list[EngineOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


@pytest.fixture
async def engine():
    sink = RecordingSink()
    eng = MockerEngine(FAST, sink)
    await eng.start()
    yield eng
    await eng.stop()


async def test_generates_max_tokens_then_reports_usage(engine: MockerEngine) -> None:
    outs = await run(engine, request("a", list(range(40)), max_tokens=25))
    toks = tokens_of(outs)
    assert len(toks) == 25
    assert all(0 <= t < FAST.vocab_size and t != FAST.eos_token_id for t in toks)
    assert outs[-1].finish_reason == "length"
    assert outs[-1].usage is not None
    assert (outs[-1].usage.prompt_tokens, outs[-1].usage.completion_tokens) == (40, 25)
    assert all(o.finish_reason is None for o in outs[:-1])
    assert engine.stats().active_blocks == 0


async def test_same_seed_same_tokens_and_greedy_is_deterministic(engine: MockerEngine) -> None:
    prompt = list(range(30))
    a = tokens_of(await run(engine, request("a", prompt, max_tokens=12, seed=7, temperature=1.0)))
    b = tokens_of(await run(engine, request("b", prompt, max_tokens=12, seed=7, temperature=1.0)))
    c = tokens_of(await run(engine, request("c", prompt, max_tokens=12, seed=8, temperature=1.0)))
    g1 = tokens_of(await run(engine, request("d", prompt, max_tokens=12)))
    g2 = tokens_of(await run(engine, request("e", prompt, max_tokens=12)))
    assert a == b and a != c and g1 == g2


async def test_stop_token_ends_with_stop(engine: MockerEngine) -> None:
    prompt = list(range(30))
    full = tokens_of(await run(engine, request("a", prompt, max_tokens=10, seed=3)))
    outs = await run(engine, request("b", prompt, max_tokens=10, seed=3, stop_token_ids=(full[3],)))
    assert tokens_of(outs)[: full.index(full[3]) + 1] == full[: full.index(full[3]) + 1]
    assert outs[-1].finish_reason == "stop"
    assert len(tokens_of(outs)) == full.index(full[3]) + 1


async def test_logprobs_are_well_formed(engine: MockerEngine) -> None:
    outs = await run(engine, request("a", [1, 2, 3], max_tokens=5, logprobs=True, top_logprobs=3))
    lps = [lp for o in outs for lp in (o.logprobs or [])]
    assert [lp.token_id for lp in lps] == tokens_of(outs)
    for lp in lps:
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0] == (lp.token_id, lp.logprob)
        assert len({t for t, _ in lp.top}) == 3
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
    no_lp = await run(engine, request("b", [1, 2, 3], max_tokens=2))
    assert all(o.logprobs is None for o in no_lp)


async def test_prefix_reuse_and_kv_events(engine: MockerEngine) -> None:
    prompt = list(range(100))  # 6 full blocks of 16 + 4
    first = await run(engine, request("a", prompt, max_tokens=1))
    second = await run(engine, request("b", prompt, max_tokens=1))
    assert first[-1].usage and first[-1].usage.cached_tokens == 0
    assert second[-1].usage and second[-1].usage.cached_tokens == 96
    sink = engine.scheduler.block_manager._sink
    assert isinstance(sink, RecordingSink)
    stored = [h for kind, data in sink.events if kind == "stored" for h, _ in data[1]]  # type: ignore[index]
    assert stored == sequence_hashes(prompt, 16)
    assert engine.stats().prefix_cache_hit_rate == pytest.approx(96 / 200)


async def test_rejects_bad_requests(engine: MockerEngine) -> None:
    for bad in ([], [FAST.vocab_size], list(range(FAST.max_model_len))):
        with pytest.raises(EngineError):
            await run(engine, request("x", bad))
    assert engine.stats().num_waiting == 0


async def test_closing_the_stream_aborts_and_frees_blocks(engine: MockerEngine) -> None:
    stream = engine.generate(request("a", list(range(64)), max_tokens=0))  # up to the context
    first = await anext(stream)
    assert first.token_ids
    assert engine.stats().active_blocks > 0
    await stream.aclose()
    stats = engine.stats()
    assert (stats.active_blocks, stats.num_running, stats.num_waiting) == (0, 0, 0)


async def test_preemption_never_loses_a_request() -> None:
    # 12 blocks of 16 tokens; each request needs up to 4 blocks: they cannot all run at once.
    config = replace(FAST, num_kv_blocks=12, scheduler=replace(FAST.scheduler, watermark=0.0))
    engine = MockerEngine(config)
    await engine.start()
    try:
        reqs = [request(f"r{i}", [i + 1] * 20, max_tokens=40) for i in range(6)]
        results = await asyncio.gather(*(run(engine, r) for r in reqs))
    finally:
        await engine.stop()
    for outs in results:
        assert len(tokens_of(outs)) == 40 and outs[-1].finish_reason == "length"
    assert engine.stats().num_preemptions > 0
    assert engine.stats().active_blocks == 0


async def test_context_limit_ends_with_length() -> None:
    engine = MockerEngine(replace(FAST, context_length=50))
    await engine.start()
    try:
        outs = await run(engine, request("a", list(range(45)), max_tokens=0))
    finally:
        await engine.stop()
    assert len(tokens_of(outs)) == 5 and outs[-1].finish_reason == "length"


async def test_default_engine_takes_a_40k_token_prompt_of_a_production_trace() -> None:
    config = MockerConfig(speedup_ratio=1000.0)  # the defaults: 16384 blocks x 16 tokens
    assert config.max_model_len == 131_072
    engine = MockerEngine(config)
    await engine.start()
    try:
        prompt = [i % 30_000 + 1 for i in range(40_000)]
        outs = await run(engine, request("long", prompt, max_tokens=3))
        assert engine.model_card().context_length == 131_072
    finally:
        await engine.stop()
    assert len(tokens_of(outs)) == 3 and outs[-1].finish_reason == "length"
    assert outs[-1].usage is not None and outs[-1].usage.prompt_tokens == 40_000


def test_the_kv_pool_still_caps_the_context_length() -> None:
    config = MockerConfig(num_kv_blocks=1000)  # 16,000 tokens of KV
    assert config.max_model_len == 16_000


def test_step_time_model() -> None:
    c = MockerConfig()
    assert c.step_seconds(0, 0, 0) == 0.0
    assert c.step_seconds(1000, 0, 0) == pytest.approx(0.015 + 0.020)
    assert c.step_seconds(0, 1, 100) == pytest.approx(0.006, rel=0.01)
    assert (
        c.step_seconds(0, 64, 64 * 2000)
        > c.step_seconds(0, 8, 8 * 2000)
        > c.step_seconds(0, 1, 2000)
    )
    assert replace(c, speedup_ratio=10).step_seconds(1000, 0, 0) == pytest.approx(0.0035)


async def test_wall_time_follows_the_model() -> None:
    engine = MockerEngine(replace(FAST, speedup_ratio=2.0))
    await engine.start()
    try:
        start = time.monotonic()
        await run(engine, request("a", list(range(1000)), max_tokens=11))
        elapsed = time.monotonic() - start
    finally:
        await engine.stop()
    expected = (0.015 + 1000 * 20e-6 + 10 * (0.006 + 30e-6 + 1005 * 40e-9)) / 2.0
    assert expected * 0.95 < elapsed < expected * 3 + 0.1  # slow only on a busy machine


async def test_migrated_request_counts_earlier_tokens_as_output(engine: MockerEngine) -> None:
    prompt, earlier = list(range(20)), [500, 501, 502]
    req = EngineRequest(
        "m", prompt + earlier, SamplingConfig(max_tokens=10), num_generated_before=3
    )
    outs = await run(engine, req)
    assert len(tokens_of(outs)) == 7
    assert outs[-1].usage is not None
    assert (outs[-1].usage.prompt_tokens, outs[-1].usage.completion_tokens) == (20, 10)


async def test_submit_pushes_each_step_and_an_abort_frees_the_blocks_and_stops_it(
    engine: MockerEngine,
) -> None:
    pulled = tokens_of(await run(engine, request("pull", list(range(1, 40)), max_tokens=12)))
    pushed: list[EngineOutput] = []
    done = asyncio.Event()

    def listener(out: EngineOutput) -> None:
        pushed.append(out)
        if out.finish_reason is not None:
            done.set()

    engine.submit(request("push", list(range(1, 40)), max_tokens=12), listener)
    assert not pushed  # never called before submit returned
    await asyncio.wait_for(done.wait(), 10)
    assert tokens_of(pushed) == pulled  # the same tokens as generate() (greedy, same prompt)
    assert all(len(o.token_ids) == 1 for o in pushed)  # one output per step
    assert pushed[-1].finish_reason == "length" and pushed[-1].usage is not None

    stopped: list[EngineOutput] = []
    first = asyncio.Event()

    def on_stopped(out: EngineOutput) -> None:
        stopped.append(out)
        first.set()

    abort = engine.submit(request("stopped", list(range(100, 140)), max_tokens=0), on_stopped)
    await asyncio.wait_for(first.wait(), 10)
    abort()
    seen = len(stopped)
    assert engine.stats().active_blocks == 0  # freed at once
    witness = await run(engine, request("witness", list(range(200, 240)), max_tokens=20))
    assert len(tokens_of(witness)) == 20  # twenty steps later...
    assert len(stopped) == seen  # ...nothing more came for the aborted one
