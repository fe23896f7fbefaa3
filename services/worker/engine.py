"""The engine seam: what every engine (torch, mocker, sglang) offers the worker.

The worker process owns gRPC, discovery and event publishing; an engine owns
the model (or its simulation), the KV cache and the scheduler. Engines are
picked by name from `ENGINES` (see `registry.py`).
"""

from __future__ import annotations

import abc
import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tandem.runtime.model_card import ModelCard

if TYPE_CHECKING:
    from .kvbm.manager import KvbmStats

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

    def kvbm_stats(self) -> KvbmStats | None:
        """The tiered KV cache's totals (None without `--connector kvbm`)."""
        return None

    def model_card(self) -> ModelCard:
        """What the worker publishes at `tandem/{ns}/models/{model}`."""
        return ModelCard(
            name=self.model_name,
            model_path=self.model_path,
            context_length=self.context_length,
            block_size=self.block_size,
            eos_token_ids=tuple(self.eos_token_ids),
        )


OutputListener = Callable[[EngineOutput], None]
"""Called on the event loop with each output of a submitted request; the last has `finish_reason`."""


class PushEngine(BaseEngine):
    """An engine whose step loop runs on the event loop and hands each output to a listener.

    No task per request and no per-token wakeup: the step loop calls each
    request's listener directly, which is how `Worker.GenerateStream` serves
    such an engine (the cheap path, see `grpc_service.py`). `generate()` is
    built on `submit()` here, once for every such engine.
    """

    @abc.abstractmethod
    def submit(self, request: EngineRequest, listener: OutputListener) -> Callable[[], None]:
        """Admit `request` and return a function that aborts it (no-op once it ended).

        Raises `EngineError` at once for a request the rules reject. `listener`
        is called from the event loop, never before `submit` returned, with
        each step's output; after the last one (or an abort) never again.
        """

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        return listened(lambda listener: self.submit(request, listener))


async def listened(
    submit: Callable[[OutputListener], Callable[[], None]],
) -> AsyncIterator[EngineOutput]:
    """The outputs of a request started by `submit(listener)` (which returns its abort), as an
    async iterator; closing it early aborts the request. `submit` runs at the first step."""
    outputs: deque[EngineOutput] = deque()
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] | None = None

    def listener(out: EngineOutput) -> None:
        outputs.append(out)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    abort = submit(listener)
    try:
        while True:
            while not outputs:
                waiter = loop.create_future()
                await waiter
            out = _merged(outputs)
            yield out
            if out.finish_reason is not None:
                return
    finally:
        abort()


def _merged(outputs: deque[EngineOutput]) -> EngineOutput:
    """Every queued output as one (a consumer that fell behind gets them together)."""
    out = outputs.popleft()
    while outputs:
        more = outputs.popleft()
        out = EngineOutput(
            token_ids=out.token_ids + more.token_ids,
            logprobs=None if out.logprobs is None else [*out.logprobs, *(more.logprobs or [])],
            finish_reason=more.finish_reason,
            usage=more.usage,
            error=more.error,
        )
    return out
