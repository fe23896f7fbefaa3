"""Typed OpenAI requests, as the rest of the frontend sees them after validation.

`validation.py` is the only producer: it turns a JSON body into one of these
or raises a precise error. Nothing downstream looks at raw dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant")

# OpenAI's limits, enforced the way its API enforces them.
MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETIONS = 5
MAX_STOP_SEQUENCES = 16
DEFAULT_COMPLETIONS_MAX_TOKENS = 16


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Generation controls shared by chat and completions."""

    # None: as many as the context allows.
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # Return the sampled token's logprob, and this many alternatives.
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True, slots=True)
class StreamOptions:
    # One extra chunk before [DONE] with empty choices and the request's usage.
    include_usage: bool = False


@dataclass(frozen=True, slots=True)
class ChatCompletionRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingOptions
    stream: bool = False
    stream_options: StreamOptions = StreamOptions()
    add_generation_prompt: bool = True


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    # Text, or token ids (the OpenAI spec allows both).
    prompt: str | tuple[int, ...]
    sampling: SamplingOptions
    stream: bool = False
    stream_options: StreamOptions = StreamOptions()
    echo: bool = False


OpenAIRequest = ChatCompletionRequest | CompletionRequest
