"""The torch engine's prefill and decode hooks, two engines in one process, KV copied pool to pool."""

from __future__ import annotations

import asyncio

import pytest
from tandem.worker.engine import EngineOutput, EngineRequest, SamplingConfig

from tests.support.torch_engine import collect, random_prompt, started_engine

pytestmark = pytest.mark.slow

PROMPT = random_prompt(100, seed=5)  # 6 full blocks of 16 and a partial one


class Collected:
    """A listener that keeps every output; `done` is set by the last one."""

    def __init__(self) -> None:
        self.outputs: list[EngineOutput] = []
        self.done = asyncio.Event()

    def __call__(self, out: EngineOutput) -> None:
        self.outputs.append(out)
        if out.finish_reason is not None:
            self.done.set()

    async def tokens(self) -> list[int]:
        await asyncio.wait_for(self.done.wait(), 120)
        return [t for out in self.outputs for t in out.token_ids]


@pytest.mark.parametrize(
    "sampling",
    [{"max_tokens": 12}, {"max_tokens": 12, "temperature": 1.0, "seed": 42}],
    ids=["greedy", "seeded"],
)
async def test_prefill_on_one_engine_decode_on_another_matches_aggregated(
    sampling: dict[str, object],
) -> None:
    # Seeded: the prefill worker draws the first token, the decode worker's generator
    # skips that draw, so the rest are the aggregated tokens too.
    request = EngineRequest("r", list(PROMPT), SamplingConfig(**sampling))  # type: ignore[arg-type]
    async with started_engine(num_kv_blocks=64) as (reference, _):
        want, _ = await collect(reference, PROMPT, **sampling)
    async with (
        started_engine(num_kv_blocks=64) as (prefill, _),
        started_engine(num_kv_blocks=64) as (decode, _),
    ):
        listener = Collected()
        abort, parked = decode.submit_parked(request, listener)
        assert parked is not None and parked.num_cached_tokens == 0
        assert len(parked.dst_block_ids) == 7
        assert decode.stats().num_running == 1  # parked: holds its blocks, not scheduled
        result = await prefill.prefill_only(request)
        assert prefill.stats().active_blocks >= 7  # pinned until released
        src = result.block_ids[: len(parked.dst_block_ids)]
        decode.kv_pool().write(parked.dst_block_ids, prefill.kv_pool().read(src))
        result.release()
        assert decode.resume_parked(parked, result.first_token, result.logprob)
        assert await listener.tokens() == want
        assert decode.stats().prefill_step_seconds_avg == 0.0  # it computed none of the prompt
        assert not decode.resume_parked(parked, result.first_token, None)  # not parked any more
        abort()


async def test_parked_request_prefilled_locally_when_told() -> None:
    request = EngineRequest("r", list(PROMPT), SamplingConfig(max_tokens=5))
    async with started_engine(num_kv_blocks=64) as (engine, _):
        want, _ = await collect(engine, PROMPT, "ref", max_tokens=5)
    async with started_engine(num_kv_blocks=64) as (engine, _):
        listener = Collected()
        _, parked = engine.submit_parked(request, listener)
        assert parked is not None
        assert engine.resume_parked(parked, None, None)
        assert await listener.tokens() == want


async def test_aborted_parked_request_frees_its_blocks() -> None:
    async with started_engine(num_kv_blocks=64) as (engine, _):
        abort, parked = engine.submit_parked(
            EngineRequest("r", list(PROMPT), SamplingConfig(max_tokens=5)), lambda out: None
        )
        assert parked is not None and engine.stats().active_blocks == 7
        abort()

        async def freed() -> None:
            while engine.stats().active_blocks:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(freed(), 30)
