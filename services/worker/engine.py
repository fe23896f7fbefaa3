"""The engine seam: what every engine (torch, mocker, sglang) offers the worker.

The worker process owns gRPC, discovery and event publishing; an engine owns
the model (or its simulation), the KV cache and the scheduler. Engines are
picked by name from `ENGINES` (see `registry.py`).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from tandem.runtime.model_card import ModelCard

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(slots=True)
class SamplingConfig:
    """How to pick the next token; mirrors `tandem.v1.SamplingParams`."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def is_greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(slots=True)
class EngineRequest:
    """One generation request as an engine sees it."""

    request_id: str
    token_ids: list[int]
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Migrated requests: the tail of token_ids that was already generated
    # elsewhere; it is prompt for the engine but output for accounting.
    num_generated_before: int = 0


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(slots=True)
class EngineOutput:
    """What one engine step produced for one request (possibly several tokens)."""

    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: str | None = None


@dataclass(slots=True)
class EngineStats:
    """A snapshot of the engine's load, for Worker.Stats, /metrics and load events."""

    total_blocks: int
    active_blocks: int
    cached_blocks: int
    num_running: int
    num_waiting: int
    pending_prefill_tokens: int
    prefix_cache_hit_rate: float
    num_preemptions: int = 0
    prefill_step_seconds_avg: float = 0.0
    decode_step_seconds_avg: float = 0.0

    @property
    def kv_usage(self) -> float:
        return self.active_blocks / self.total_blocks if self.total_blocks else 0.0


class EngineError(Exception):
    """The request cannot be served by this engine (a bad value; see `admission.py`)."""


class EngineStoppedError(EngineError):
    """The engine is not running (not started yet, or stopping): another worker may serve it."""


class BaseEngine(abc.ABC):
    """An inference engine with a paged KV cache.

    Contract:
    - `start()` loads what it needs; `stop()` aborts every request and frees
      everything. Engine steps never run on the event loop.
    - `generate()` yields `EngineOutput`s; the last one carries `finish_reason`
      and `usage`. Closing the iterator early (client gone, gRPC cancel) aborts
      the request and frees its blocks at once.
    - Every block stored or evicted is reported to the `KvEventSink` given at
      construction, in the order it happened.
    - Requests are checked and turned into sequences by `admission.admit`, the
      same rules on every engine; bad ones raise `EngineError` from `generate()`
      before any output.
    """

    block_size: int
    total_blocks: int
    model_name: str

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]: ...

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    @property
    def context_length(self) -> int:
        """Longest prompt + output this engine accepts."""
        return 2**31

    @property
    def model_path(self) -> str:
        """Where clients load the tokenizer and chat template (GGUF file or HF directory)."""
        return ""

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return ()

    def model_card(self) -> ModelCard:
        """What the worker publishes at `tandem/{ns}/models/{model}`."""
        return ModelCard(
            name=self.model_name,
            model_path=self.model_path,
            context_length=self.context_length,
            block_size=self.block_size,
            eos_token_ids=tuple(self.eos_token_ids),
        )
