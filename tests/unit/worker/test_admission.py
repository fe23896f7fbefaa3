"""The worker's request rules, the same on every engine: each case runs on the mocker and torch."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tandem.worker.admission import ContextLengthError
from tandem.worker.engine import (
    BaseEngine,
    EngineError,
    EngineOutput,
    EngineRequest,
    SamplingConfig,
)
from tandem.worker.mocker import MockerConfig, MockerEngine
from tandem.worker.torch_engine import TorchEngine

from tests.support.torch_engine import random_prompt, running_engine

CONTEXT = 64  # both engines: a context short enough to fill in a test


@pytest.fixture(scope="module")
def torch_engine() -> Iterator[TorchEngine]:
    with running_engine(num_kv_blocks=16, max_model_len=CONTEXT) as (engine, _):
        yield engine


@pytest.fixture(params=["mocker", pytest.param("torch", marks=pytest.mark.slow)])
def started_torch(request: pytest.FixtureRequest) -> TorchEngine | None:
    """The shared torch engine, or None for the mocker (started per test on the test's loop)."""
    return request.getfixturevalue("torch_engine") if request.param == "torch" else None


@pytest.fixture
async def engine(started_torch: TorchEngine | None) -> AsyncIterator[BaseEngine]:
    if started_torch is not None:
        yield started_torch
        return
    mocker = MockerEngine(
        MockerConfig(speedup_ratio=1000.0, num_kv_blocks=16, context_length=CONTEXT)
    )
    await mocker.start()
    yield mocker
    await mocker.stop()


def prompt(n: int) -> list[int]:
    return random_prompt(n, seed=n)


async def run(engine: BaseEngine, request: EngineRequest) -> list[EngineOutput]:
    return [out async for out in engine.generate(request)]


def req(token_ids: list[int], before: int = 0, **sampling: Any) -> EngineRequest:
    sampling.setdefault("ignore_eos", True)
    return EngineRequest("r", token_ids, SamplingConfig(**sampling), num_generated_before=before)


def tokens_of(outs: list[EngineOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


async def rejected(engine: BaseEngine, request: EngineRequest) -> EngineError:
    with pytest.raises(EngineError) as info:
        await run(engine, request)
    stats = engine.stats()
    assert (stats.num_waiting, stats.num_running, stats.active_blocks) == (0, 0, 0)
    return info.value


def test_both_engines_have_the_test_context(engine: BaseEngine) -> None:
    assert engine.context_length == CONTEXT


async def test_empty_prompt_is_rejected(engine: BaseEngine) -> None:
    error = await rejected(engine, req([], max_tokens=1))
    assert not isinstance(error, ContextLengthError)


async def test_token_ids_outside_the_vocabulary_are_rejected(engine: BaseEngine) -> None:
    vocab = engine.model_card().vocab_size
    cases = (
        ([vocab], vocab),
        ([1, -1], -1),
        ([5, 1 << 40, 3], 1 << 40),  # beyond 32 bits
        ([1] * 1000 + [vocab + 7] + [2] * 10, vocab + 7),  # one bad id deep in a long prompt
    )
    for prompt, bad in cases:
        error = await rejected(engine, req(prompt, max_tokens=1))
        assert str(error) == f"Token id {bad} is out of vocabulary (size {vocab})."
    assert tokens_of(await run(engine, req([0, vocab - 1], max_tokens=1)))


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": -0.1},
        {"temperature": math.inf},
        {"temperature": math.nan},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": math.nan},
        {"top_k": -1},
        {"top_logprobs": -1, "logprobs": True},
        {"max_tokens": -1},
    ],
)
async def test_sampling_values_out_of_range_are_rejected(
    engine: BaseEngine, sampling: dict[str, Any]
) -> None:
    sampling.setdefault("max_tokens", 2)
    error = await rejected(engine, req(prompt(8), **sampling))
    assert not isinstance(error, ContextLengthError)
    assert next(iter(sampling)) in str(error)


async def test_sampling_edges_are_accepted(engine: BaseEngine) -> None:
    for sampling in ({"temperature": 0.0, "top_p": 1.0, "top_k": 0}, {"temperature": 2.0}):
        assert len(tokens_of(await run(engine, req(prompt(8), max_tokens=2, **sampling)))) == 2


@pytest.mark.parametrize("before", [-1, 9])
async def test_generated_before_must_be_within_the_prompt(engine: BaseEngine, before: int) -> None:
    error = await rejected(engine, req(prompt(8), before, max_tokens=20))
    assert "num_generated_before" in str(error)


async def test_max_tokens_zero_means_up_to_the_context_length(engine: BaseEngine) -> None:
    outs = await run(engine, req(prompt(CONTEXT - 4), max_tokens=0))
    assert len(tokens_of(outs)) == 4 and outs[-1].finish_reason == "length"
    assert outs[-1].usage is not None
    assert (outs[-1].usage.prompt_tokens, outs[-1].usage.completion_tokens) == (CONTEXT - 4, 4)


async def test_a_prompt_that_fills_the_context_is_rejected(engine: BaseEngine) -> None:
    error = await rejected(engine, req(prompt(CONTEXT), max_tokens=1))
    assert isinstance(error, ContextLengthError)
    assert str(error) == (
        f"This model's maximum context length is {CONTEXT} tokens. However, you requested "
        f"{CONTEXT + 1} tokens ({CONTEXT} in the messages, 1 in the completion). "
        "Please reduce the length of the messages or completion."
    )
    assert isinstance(
        await rejected(engine, req(prompt(CONTEXT + 5), max_tokens=0)), ContextLengthError
    )


async def test_prompt_plus_max_tokens_beyond_the_context_is_rejected(engine: BaseEngine) -> None:
    # The mocker used to clamp this silently; it must reject it like the torch engine.
    error = await rejected(engine, req(prompt(40), max_tokens=CONTEXT - 39))
    assert isinstance(error, ContextLengthError)
    assert f"you requested {CONTEXT + 1} tokens (40 in the messages, 25 in the completion)" in str(
        error
    )
    outs = await run(engine, req(prompt(40), max_tokens=CONTEXT - 40))  # exactly fits
    assert len(tokens_of(outs)) == CONTEXT - 40 and outs[-1].finish_reason == "length"


async def test_max_tokens_counts_tokens_generated_before_a_migration(engine: BaseEngine) -> None:
    outs = await run(engine, req(prompt(23), before=3, max_tokens=10))
    assert len(tokens_of(outs)) == 7
    assert outs[-1].usage is not None
    assert (outs[-1].usage.prompt_tokens, outs[-1].usage.completion_tokens) == (20, 10)
    # The context check counts the client's messages and completion.
    error = await rejected(engine, req(prompt(60), before=10, max_tokens=20))
    assert isinstance(error, ContextLengthError)
    assert "you requested 70 tokens (50 in the messages, 20 in the completion)" in str(error)


async def test_a_migrated_request_with_max_tokens_reached_ends_at_once(engine: BaseEngine) -> None:
    # The mocker used to reject it; both engines finish it with "length" and full usage.
    outs = await run(engine, req(prompt(23), before=3, max_tokens=3))
    assert [(o.token_ids, o.finish_reason) for o in outs] == [([], "length")]
    usage = outs[0].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (20, 3, 0)
    stats = engine.stats()
    assert (stats.num_waiting, stats.num_running, stats.active_blocks) == (0, 0, 0)
