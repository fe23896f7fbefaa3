"""The torch engine end to end on the bundled model: batching, prefix cache, preemption."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest
from tandem.runtime.block_hash import sequence_hashes
from tandem.worker.engine import EngineError, EngineRequest, SamplingConfig
from tandem.worker.kv_event_sink import RecordingSink
from tandem.worker.torch_engine import TorchEngine, TorchEngineConfig

from tests.support.torch_engine import (
    CHAT_PROMPTS,
    TEXT_PROMPT,
    collect,
    random_prompt,
    running_engine,
    started_engine,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine_and_sink() -> Iterator[tuple[TorchEngine, RecordingSink]]:
    with running_engine() as pair:
        yield pair


@pytest.fixture
def engine(engine_and_sink: tuple[TorchEngine, RecordingSink]) -> TorchEngine:
    return engine_and_sink[0]


@pytest.fixture(scope="module")
def reference_tokens(
    engine_and_sink: tuple[TorchEngine, RecordingSink],
) -> dict[int, list[int]]:
    """Greedy tokens of each test prompt, run one at a time."""
    engine = engine_and_sink[0]

    async def run() -> dict[int, list[int]]:
        out = {}
        for i, prompt in enumerate(_prompts()):
            out[i] = (await collect(engine, prompt, max_tokens=12, ignore_eos=True))[0]
        return out

    return asyncio.run(run())


def _prompts() -> list[list[int]]:
    return [*CHAT_PROMPTS, TEXT_PROMPT, random_prompt(70, seed=3)]


async def _wait_idle(engine: TorchEngine) -> None:
    for _ in range(200):
        stats = engine.stats()
        if stats.active_blocks == 0 and stats.num_running == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"engine still busy: {engine.stats()}")


def test_identity(engine: TorchEngine) -> None:
    assert engine.model_name == "SmolLM2-135M-Instruct"
    assert engine.eos_token_ids == (2,)
    assert engine.context_length == 8192
    assert engine.block_size == 16 and engine.total_blocks == 512


async def test_batched_equals_one_at_a_time(
    engine: TorchEngine, reference_tokens: dict[int, list[int]]
) -> None:
    results = await asyncio.gather(
        *(
            collect(engine, p, f"b{i}", max_tokens=12, ignore_eos=True)
            for i, p in enumerate(_prompts())
        )
    )
    for i, (tokens, outs) in enumerate(results):
        assert tokens == reference_tokens[i]
        assert outs[-1].finish_reason == "length"
        assert outs[-1].usage is not None and outs[-1].usage.completion_tokens == 12


async def test_prefix_cache_hit_equals_cold_run(
    engine_and_sink: tuple[TorchEngine, RecordingSink],
) -> None:
    engine, sink = engine_and_sink
    prompt = random_prompt(100, seed=11)
    cold, cold_outs = await collect(engine, prompt, max_tokens=8, ignore_eos=True)
    assert cold_outs[-1].usage is not None and cold_outs[-1].usage.cached_tokens == 0
    # Every full block of the prompt was reported, with the shared hash function.
    stored = [h for kind, ev in sink.events if kind == "stored" for h, _ in ev[1]]  # type: ignore[index]
    assert set(sequence_hashes(prompt, 16)) <= set(stored)
    warm, warm_outs = await collect(engine, prompt, max_tokens=8, ignore_eos=True)
    usage = warm_outs[-1].usage
    assert usage is not None and usage.cached_tokens == 96 and usage.prompt_tokens == 100
    assert warm == cold
    # A different continuation of the same prefix reuses it too.
    branch = prompt[:64] + random_prompt(20, seed=12)
    _, outs = await collect(engine, branch, max_tokens=2)
    assert outs[-1].usage is not None and outs[-1].usage.cached_tokens == 64
    assert engine.stats().prefix_cache_hit_rate > 0


async def test_chunked_prefill_equals_unchunked(reference_tokens: dict[int, list[int]]) -> None:
    async with started_engine(max_num_batched_tokens=24) as (chunked, _):
        results = await asyncio.gather(
            *(collect(chunked, p, f"c{i}", max_tokens=12, ignore_eos=True)
              for i, p in enumerate(_prompts()))
        )  # fmt: skip
        assert [tokens for tokens, _ in results] == [reference_tokens[i] for i in range(5)]
        assert chunked.stats().prefill_step_seconds_avg > 0


async def test_out_of_blocks_preempts_and_completes_every_request(engine: TorchEngine) -> None:
    prompts = [random_prompt(20, seed=40 + i) for i in range(4)]

    async def run_all(eng: TorchEngine) -> list[list[int]]:
        results = await asyncio.gather(
            *(collect(eng, p, f"p{i}", max_tokens=20, ignore_eos=True)
              for i, p in enumerate(prompts))
        )  # fmt: skip
        return [tokens for tokens, _ in results]

    expected = await run_all(engine)
    # All four start with 2 blocks each; at 40 tokens they need 3 each: 12 > 8.
    async with started_engine(num_kv_blocks=8, max_model_len=8 * 16) as (small, _):
        assert await run_all(small) == expected
        assert small.stats().num_preemptions > 0
        await _wait_idle(small)


async def test_cancel_frees_blocks_at_once(engine: TorchEngine) -> None:
    stream = engine.generate(
        EngineRequest("cancel-me", random_prompt(60, seed=5), SamplingConfig(max_tokens=500))
    )
    await stream.__anext__()
    await stream.__anext__()
    assert engine.stats().active_blocks > 0
    await stream.aclose()  # type: ignore[attr-defined]
    await _wait_idle(engine)

    async def consume() -> None:
        async for _ in engine.generate(
            EngineRequest("cancel-task", random_prompt(60, seed=6), SamplingConfig(max_tokens=500))
        ):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_idle(engine)


async def test_seeded_sampling_is_reproducible(engine: TorchEngine) -> None:
    sampling: dict[str, Any] = {
        "temperature": 0.9,
        "top_p": 0.95,
        "top_k": 50,
        "max_tokens": 10,
        "ignore_eos": True,
    }
    prompt = CHAT_PROMPTS[1]
    first, _ = await collect(engine, prompt, seed=1234, **sampling)
    # Same seed in a busy batch: same tokens.
    again = await asyncio.gather(
        collect(engine, prompt, "a", seed=1234, **sampling),
        collect(engine, prompt, "b", seed=99, **sampling),
        collect(engine, CHAT_PROMPTS[0], "c", **sampling),
    )
    assert again[0][0] == first
    others = [(await collect(engine, prompt, seed=s, **sampling))[0] for s in range(3)]
    assert any(o != first for o in others)


async def test_logprobs_present_and_sane(engine: TorchEngine) -> None:
    tokens, outs = await collect(
        engine, CHAT_PROMPTS[0], max_tokens=6, logprobs=True, top_logprobs=3
    )
    lps = [lp for out in outs for lp in (out.logprobs or [])]
    assert len(lps) == len(tokens)
    for token, lp in zip(tokens, lps, strict=True):
        assert lp.token_id == token and lp.logprob <= 0.0
        assert len(lp.top) == 3
        assert lp.top[0][0] == token and math.isclose(lp.top[0][1], lp.logprob, abs_tol=1e-5)
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
    plain, outs = await collect(engine, CHAT_PROMPTS[0], max_tokens=6)
    assert plain == tokens and all(out.logprobs is None for out in outs)


async def test_eos_stop_tokens_and_ignore_eos(engine: TorchEngine) -> None:
    # The greedy answer to "What is the capital of France?" ends with <|im_end|>.
    tokens, outs = await collect(engine, CHAT_PROMPTS[0], max_tokens=40)
    assert tokens[-1] == 2 and outs[-1].finish_reason == "stop"
    longer, outs = await collect(
        engine, CHAT_PROMPTS[0], max_tokens=len(tokens) + 2, ignore_eos=True
    )
    assert longer[: len(tokens)] == tokens and outs[-1].finish_reason == "length"
    stopped, outs = await collect(
        engine, CHAT_PROMPTS[0], max_tokens=40, stop_token_ids=(tokens[2],)
    )
    assert stopped == tokens[:3] and outs[-1].finish_reason == "stop"


async def test_migrated_tokens_count_as_output(engine: TorchEngine) -> None:
    full, _ = await collect(engine, CHAT_PROMPTS[2], max_tokens=8, ignore_eos=True)
    request = EngineRequest(
        "migrated",
        CHAT_PROMPTS[2] + full[:5],
        SamplingConfig(max_tokens=8, ignore_eos=True),
        num_generated_before=5,
    )
    outs = [out async for out in engine.generate(request)]
    assert [t for out in outs for t in out.token_ids] == full[5:]
    assert outs[-1].usage is not None
    assert outs[-1].usage.prompt_tokens == len(CHAT_PROMPTS[2])
    assert outs[-1].usage.completion_tokens == 8


async def test_bad_requests_raise_before_any_output(engine: TorchEngine) -> None:
    too_long = EngineRequest("long", [5] * 8192, SamplingConfig(max_tokens=1))
    with pytest.raises(EngineError, match="context length"):
        await engine.generate(too_long).__anext__()
    over = EngineRequest("over", [5] * 8000, SamplingConfig(max_tokens=500))
    with pytest.raises(EngineError, match="context length"):
        await engine.generate(over).__anext__()
    with pytest.raises(EngineError):
        await engine.generate(EngineRequest("bad", [1, 10**6])).__anext__()
    with pytest.raises(EngineError):
        await engine.generate(EngineRequest("empty", [])).__anext__()


def test_config_flags_have_the_usual_names() -> None:
    import argparse

    from tandem.runtime.config import add_arguments, config_from_namespace

    parser = argparse.ArgumentParser()
    add_arguments(parser, TorchEngineConfig)
    ns = parser.parse_args(
        ["--model-path", "/m", "--dtype", "float32", "--device", "cpu", "--num-kv-blocks", "7",
         "--kv-cache-block-size", "32", "--max-num-seqs", "3", "--max-num-batched-tokens", "64",
         "--no-enable-prefix-caching"]
    )  # fmt: skip
    cfg = config_from_namespace(TorchEngineConfig, ns, environ={})
    assert (cfg.model_path, cfg.dtype, cfg.num_kv_blocks, cfg.scheduler.kv_cache_block_size) == (
        "/m", "float32", 7, 32,
    )  # fmt: skip
    assert cfg.scheduler.max_num_seqs == 3 and cfg.scheduler.max_num_batched_tokens == 64
    assert not cfg.scheduler.enable_prefix_caching


async def test_bfloat16_engine_answers_like_float32(engine: TorchEngine) -> None:
    """Fed float32's answer token by token, bf16 ranks each next token of it first, up to
    bf16's rounding. Not the same greedy text: logits of ~25 round to steps of 0.125 in
    bf16, so two candidates 0.08 apart in float32 tie and the lower id wins (on AVX2 CPUs
    "The capital..." starts "L'Étoile" that way). A broken bf16 path ranks them nowhere."""
    reference, _ = await collect(engine, CHAT_PROMPTS[0], max_tokens=8)  # "The capital ... Paris"
    async with started_engine(dtype="bfloat16") as (bf16, _):
        for k in range(6):
            _, outs = await collect(
                bf16, CHAT_PROMPTS[0] + reference[:k], max_tokens=1, logprobs=True, top_logprobs=5
            )
            assert outs[0].logprobs is not None
            top = dict(outs[0].logprobs[0].top)
            assert reference[k] in top, (k, reference[k], top)
            assert top[reference[k]] >= max(top.values()) - 0.25, (k, reference[k], top)


async def test_evicted_blocks_are_reported_removed() -> None:
    async with started_engine(num_kv_blocks=6, max_model_len=96) as (small, sink):
        first = random_prompt(40, seed=21)
        await collect(small, first, max_tokens=1)
        first_hashes = sequence_hashes(first, 16)
        assert small.stats().cached_blocks >= 2
        await collect(small, random_prompt(88, seed=22), max_tokens=1)  # needs all 6 blocks
        removed = [h for kind, ev in sink.events if kind == "removed" for h in ev]  # type: ignore[union-attr]
        assert set(first_hashes) <= set(removed)
        stored_then_removed = [kind for kind, _ in sink.events]
        assert stored_then_removed.index("removed") > stored_then_removed.index("stored")


async def test_max_tokens_zero_means_up_to_the_context_length() -> None:
    async with started_engine(num_kv_blocks=8, max_model_len=48) as (small, _):
        tokens, outs = await collect(
            small, random_prompt(40, seed=31), max_tokens=0, ignore_eos=True
        )
        assert len(tokens) == 8 and outs[-1].finish_reason == "length"


def test_model_card(engine: TorchEngine) -> None:
    card = engine.model_card()
    assert card.name == "SmolLM2-135M-Instruct" and card.model_path.endswith(".gguf")
    assert (card.context_length, card.block_size, card.eos_token_ids) == (8192, 16, (2,))
    assert card.vocab_size == 49152
