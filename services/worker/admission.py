"""The request rules every engine applies: check an `EngineRequest`, build its `Sequence`.

One place for what a worker accepts, so the torch engine, the mocker and any
later engine reject, clamp and account alike. The frontend checks only what
OpenAI's API defines and relays these errors to its client.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy

from .engine import EngineError, EngineRequest
from .sequence import Sequence, SequenceStatus

S = TypeVar("S", bound=Sequence)


class ContextLengthError(EngineError):
    """The prompt, or the prompt plus `max_tokens`, does not fit the engine's context."""


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """What an engine can serve: its context length, vocabulary and EOS ids."""

    context_length: int  # longest prompt + output
    vocab_size: int  # prompt token ids must be in [0, vocab_size)
    eos_token_ids: tuple[int, ...]


def admit(
    request: EngineRequest, limits: EngineLimits, new: Callable[..., S], /, **extra: Any
) -> S:
    """`request` as a sequence built by `new(**fields, **extra)`; raises `EngineError`
    (`ContextLengthError` for the context rules) if it breaks a rule.

    `new` is the engine's `Sequence` subclass, or a factory adding the fields
    only that engine has; it is called only for a request that passed.

    A migrated request whose `max_tokens` was already reached comes back
    finished with "length" (never scheduled): its caller sends one final output.
    """
    max_new = max_new_tokens(request, limits)
    seq = new(
        request_id=request.request_id,
        token_ids=list(request.token_ids),
        params=request.sampling,
        max_new_tokens=max_new,
        max_len=limits.context_length,
        eos_token_ids=limits.eos_token_ids,
        num_generated_before=request.num_generated_before,
        **extra,
    )
    if max_new <= 0:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = "length"
    return seq


def max_new_tokens(request: EngineRequest, limits: EngineLimits) -> int:
    """Tokens still to generate for `request` (<= 0: none); raises `EngineError` if it is invalid."""
    prompt = request.token_ids
    # The messages reach the client as they are (the frontend relays them).
    if not prompt:
        raise EngineError("The prompt is empty after tokenization.")
    vocab_size = limits.vocab_size
    if not _all_in_vocabulary(prompt, vocab_size):
        bad = next(t for t in prompt if not 0 <= t < vocab_size)
        raise EngineError(f"Token id {bad} is out of vocabulary (size {vocab_size}).")
    _check_sampling(request)
    before = request.num_generated_before
    if not 0 <= before <= len(prompt):
        raise EngineError("num_generated_before must be within the prompt")
    s = request.sampling
    limit = limits.context_length
    # max_tokens bounds the whole completion, tokens generated before a migration
    # included; 0 means up to the context length.
    max_new = s.max_tokens - before if s.max_tokens > 0 else limit - len(prompt)
    if len(prompt) >= limit or len(prompt) + max(max_new, 0) > limit:
        num_prompt = len(prompt) - before
        # As the client counts: migrated tokens are completion, and a prompt
        # that fills the context leaves no room for even one more token.
        num_completion = s.max_tokens if s.max_tokens > 0 else before + 1
        raise ContextLengthError(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{num_prompt + num_completion} tokens ({num_prompt} in the messages, "
            f"{num_completion} in the completion). Please reduce the length of the messages "
            "or completion."
        )
    return max_new


def _all_in_vocabulary(prompt: list[int], vocab_size: int) -> bool:
    """Whether every id of `prompt` is in [0, vocab_size), in two C passes: every prompt
    token of every request comes through here, and `min()` + `max()` over a list cost a
    Python comparison per token each (8 % of a simulated fleet's instructions)."""
    try:
        ids = array("I", prompt)  # refuses ids below 0 (and beyond 32 bits)
    except OverflowError:
        return False
    return int(numpy.frombuffer(ids, dtype=numpy.uint32).max()) < vocab_size


def _check_sampling(request: EngineRequest) -> None:
    s = request.sampling
    if not (math.isfinite(s.temperature) and s.temperature >= 0):
        raise EngineError(f"temperature must be a finite number >= 0, got {s.temperature}")
    if not 0.0 < s.top_p <= 1.0:  # also rejects NaN
        raise EngineError(f"top_p must be in (0, 1], got {s.top_p}")
    if s.top_k < 0:
        raise EngineError(f"top_k must be >= 0, got {s.top_k}")
    if s.top_logprobs < 0:
        raise EngineError(f"top_logprobs must be >= 0, got {s.top_logprobs}")
    if s.max_tokens < 0:
        raise EngineError(f"max_tokens must be >= 0, got {s.max_tokens}")
