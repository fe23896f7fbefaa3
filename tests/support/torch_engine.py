"""Helpers shared by the torch engine tests: one copy of the weights per test process."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import torch
from tandem.worker.engine import EngineOutput, EngineRequest, SamplingConfig
from tandem.worker.kv_event_sink import RecordingSink
from tandem.worker.scheduler_config import SchedulerConfig
from tandem.worker.torch_engine import TorchEngine, TorchEngineConfig
from tandem.worker.torch_engine.config import default_model_path
from tandem.worker.torch_engine.loader import load_weights
from tandem.worker.torch_engine.model_config import ModelConfig

# Chat-templated prompts (SmolLM2 tokenizer) and a plain-text one.
CHAT_PROMPTS = [
    [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
     19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531,
     198],
    [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
     19712, 8182, 2, 198, 1, 4093, 198, 19161, 253, 421, 30614, 563, 260, 3426, 30, 2, 198, 1, 520,
     9531, 198],
    [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
     19712, 8182, 2, 198, 1, 4093, 198, 6106, 1296, 9552, 2966, 30, 2, 198, 1, 520, 9531, 198],
]  # fmt: skip
TEXT_PROMPT = [504, 1463, 282, 260, 7510, 1757, 5634, 281, 260, 35561, 2070, 30, 378] * 4


def random_prompt(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 49000, (n,), generator=g).tolist()


@functools.lru_cache(maxsize=1)
def default_weights() -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    return load_weights(default_model_path())


def make_engine(**overrides: Any) -> tuple[TorchEngine, RecordingSink]:
    """A float32 engine on the bundled model (weights loaded once per process).

    `overrides` are flat, as the flags are: scheduler fields go to its `SchedulerConfig`.
    """
    settings: dict[str, Any] = {"dtype": "float32", "device": "cpu", "num_kv_blocks": 512}
    scheduler_fields = {f.name for f in dataclasses.fields(SchedulerConfig)}
    scheduling = {k: overrides.pop(k) for k in list(overrides) if k in scheduler_fields}
    settings.update(overrides)
    settings["scheduler"] = SchedulerConfig(**scheduling)
    sink = RecordingSink()
    return TorchEngine(TorchEngineConfig(**settings), sink, weights=default_weights()), sink


@contextmanager
def running_engine(**overrides: Any) -> Iterator[tuple[TorchEngine, RecordingSink]]:
    """`make_engine`, started; for sync (module-scoped) fixtures."""
    engine, sink = make_engine(**overrides)
    asyncio.run(engine.start())
    try:
        yield engine, sink
    finally:
        asyncio.run(engine.stop())


@asynccontextmanager
async def started_engine(**overrides: Any) -> AsyncIterator[tuple[TorchEngine, RecordingSink]]:
    """`make_engine`, started; inside async tests."""
    engine, sink = make_engine(**overrides)
    await engine.start()
    try:
        yield engine, sink
    finally:
        await engine.stop()


async def collect(
    engine: TorchEngine, prompt: list[int], request_id: str = "r", **sampling: Any
) -> tuple[list[int], list[EngineOutput]]:
    """All tokens of one request, and every output message."""
    outs = [
        out
        async for out in engine.generate(
            EngineRequest(request_id, list(prompt), SamplingConfig(**sampling))
        )
    ]
    return [t for out in outs for t in out.token_ids], outs
