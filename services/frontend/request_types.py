"""The OpenAI request bodies, declared once: decoding, limits and the published JSON Schema.

Each `*Body` is a msgspec Struct: a `BodyDecoder` (`request_errors.py`) decodes
and checks a JSON body against it in one pass, and `openapi.py` publishes its
JSON Schema, so what the frontend enforces is what it documents. The rules a
type cannot say (a field that needs another, a batch of one) run after
decoding, in `chat_request` / `completion_request`, which build the validated
requests the rest of the frontend sees. What needs the model (an empty
tokenized prompt, token ids outside its vocabulary, the context length) the
worker checks; the frontend relays its verdict as a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from .errors import InvalidRequestError, InvalidTypeError, UnsupportedParameterError

Role = Literal["system", "user", "assistant"]

# OpenAI's limits, enforced the way its API enforces them.
MAX_TOP_LOGPROBS_CHAT = 20
MAX_LOGPROBS_COMPLETIONS = 5
MAX_STOP_SEQUENCES = 16
DEFAULT_COMPLETIONS_MAX_TOKENS = 16
# Counts travel as uint32 on the wire; larger values are never meaningful.
_INT32_MAX = 2**31 - 1
_UINT64 = 2**64

Count = Annotated[int, Meta(ge=1, le=_INT32_MAX)]
# Token ids travel as uint32; the worker checks them against the vocabulary.
TokenId = Annotated[int, Meta(ge=0, le=2**32 - 1)]
_TOKEN_IDS = {"type": "array", "items": msgspec.json.schema(TokenId), "minItems": 1}
# msgspec takes one array type per union; this says what `completion_request` then allows.
_PROMPT_SCHEMA = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        _TOKEN_IDS,
        {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "maxItems": 1,
        },
        {"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": 1},
    ],
    "description": "Text or token ids; a batch of exactly one of either is accepted.",
}
Prompt = Annotated[
    str | list[TokenId | str | list[TokenId]], Meta(extra_json_schema=_PROMPT_SCHEMA)
]
StopSequence = Annotated[str, Meta(min_length=1)]
Stop = StopSequence | Annotated[list[StopSequence], Meta(max_length=MAX_STOP_SEQUENCES)]


# Accepted only at their no-op value; anything else is a feature we do not have.
NoPenalty = Annotated[float, Meta(ge=0, le=0, description="Accepted only as 0.")]
OnlyOne = Annotated[int, Meta(ge=1, le=1, description="Accepted only as 1.")]
OnlyNone = Annotated[Literal["none"], Meta(description="Accepted only as 'none'.")]
NoItems = Annotated[list[Any], Meta(max_length=0, description="Accepted only empty.")]


class StreamOptions(Struct, frozen=True, forbid_unknown_fields=True):
    """What a streamed answer adds: `include_usage` sends the usage in a last chunk."""

    include_usage: bool = False


class ResponseFormat(Struct, frozen=True, forbid_unknown_fields=True):
    """Only plain text: structured output is not implemented."""

    type: Literal["text"]


class TextContentPart(Struct, frozen=True):
    """One part of a message's content; only text parts are supported."""

    type: Literal["text"]
    text: str


Content = str | list[TextContentPart]


class _Message(Struct, frozen=True, kw_only=True, tag_field="role"):
    """One chat message as sent, its type by `role`; fields it does not name are ignored."""

    name: str | None = None
    tool_calls: NoItems | None = None


class _SaidMessage(_Message, frozen=True, kw_only=True):
    """A message whose content is required."""

    content: Content


class SystemMessage(_SaidMessage, frozen=True, kw_only=True, tag="system"):
    """Instructions for the model."""


class DeveloperMessage(_SaidMessage, frozen=True, kw_only=True, tag="developer"):
    """OpenAI's newer name for a system message."""


class UserMessage(_SaidMessage, frozen=True, kw_only=True, tag="user"):
    """What the user said."""


class AssistantMessage(_Message, frozen=True, kw_only=True, tag="assistant"):
    """An earlier answer of the model; its content may be null."""

    content: Content | None = None


MessageBody = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage
# Each message's role in the chat template, which knows no "developer".
_TEMPLATE_ROLES: dict[type[_Message], Role] = {
    SystemMessage: "system",
    DeveloperMessage: "system",
    UserMessage: "user",
    AssistantMessage: "assistant",
}
ROLES = tuple(str(message.__struct_config__.tag) for message in _TEMPLATE_ROLES)


class _Body(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The fields chat and completions share; an unknown field is refused (400)."""

    model: str
    stream: bool | None = None
    stream_options: StreamOptions | None = None  # only with `stream`: true
    max_tokens: Count | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Meta(ge=-1, le=_INT32_MAX, description="-1 or 0: off.")] | None = None
    seed: int | None = None
    stop: Stop | None = None
    n: OnlyOne | None = None
    ignore_eos: bool | None = None
    min_tokens: (
        Annotated[int, Meta(ge=0, le=_INT32_MAX, description="Only with `ignore_eos`: true.")]
        | None
    ) = None
    # Accepted and ignored, of any type: they change nothing about the answer.
    user: Any = None
    parallel_tool_calls: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    # Accepted only at their no-op value; anything else is a feature we do not have.
    frequency_penalty: NoPenalty | None = None
    presence_penalty: NoPenalty | None = None
    repetition_penalty: Annotated[float, Meta(ge=1, le=1)] | None = None
    logit_bias: Annotated[dict[str, float], Meta(max_length=0)] | None = None
    best_of: OnlyOne | None = None
    suffix: Annotated[str, Meta(max_length=0)] | None = None
    tools: NoItems | None = None
    functions: NoItems | None = None
    tool_choice: OnlyNone | None = None
    function_call: OnlyNone | None = None
    response_format: ResponseFormat | None = None


class ChatCompletionBody(_Body, frozen=True, kw_only=True):
    """`POST /v1/chat/completions`: a conversation for the model's chat template."""

    messages: Annotated[list[MessageBody], Meta(min_length=1)]
    max_completion_tokens: Count | None = None
    logprobs: bool | None = None
    top_logprobs: (
        Annotated[
            int, Meta(ge=0, le=MAX_TOP_LOGPROBS_CHAT, description="Only with `logprobs`: true.")
        ]
        | None
    ) = None
    add_generation_prompt: bool | None = None


class CompletionBody(_Body, frozen=True, kw_only=True):
    """`POST /v1/completions`: one prompt, as text or token ids."""

    prompt: Prompt
    logprobs: Annotated[int, Meta(ge=0, le=MAX_LOGPROBS_COMPLETIONS)] | None = None
    echo: bool | None = None


# Values the API defines that this server implements only in part: any error about
# one of these fields (by `param`, indexes as `[]`) is "unsupported", with this message.
UNSUPPORTED: dict[str, str] = {
    "n": "Only n=1 is supported.",
    "messages[].tool_calls": "Tool calls are not supported.",
    "messages[].content[].type": "Content part type {value!r} is not supported; only 'text'.",
    **{
        name: f"'{name}' is not supported by this server."
        for name in (
            "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias",
            "best_of", "suffix", "tools", "functions", "tool_choice", "function_call",
            "response_format",
        )
    },
}  # fmt: skip
# The values an enum-like field takes, for the error that names them.
CHOICES: dict[str, tuple[str, ...]] = {"messages[].role": ROLES}


# -- the validated requests, as the rest of the frontend sees them ---------------------------
# Frozen Structs rather than frozen dataclasses: a fraction of the cost to build, per request.


class ChatMessage(Struct, frozen=True):
    """One message as the chat template takes it: its role, and its content as one text."""

    role: Role
    content: str
    name: str | None = None


class SamplingOptions(Struct, frozen=True):
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


_NO_STREAM_OPTIONS = StreamOptions()


class ChatCompletionRequest(Struct, frozen=True):
    """A validated chat request: the conversation, and how to answer it."""

    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingOptions
    stream: bool = False
    stream_options: StreamOptions = _NO_STREAM_OPTIONS
    add_generation_prompt: bool = True


class CompletionRequest(Struct, frozen=True):
    """A validated completion request: the prompt, and how to continue it."""

    model: str
    # Text, or token ids (the OpenAI spec allows both).
    prompt: str | tuple[int, ...]
    sampling: SamplingOptions
    stream: bool = False
    stream_options: StreamOptions = _NO_STREAM_OPTIONS
    echo: bool = False


OpenAIRequest = ChatCompletionRequest | CompletionRequest


# -- the rules a type cannot say ------------------------------------------------------------


def _sampling(
    body: _Body, *, max_tokens: int | None, logprobs: bool, top_logprobs: int
) -> SamplingOptions:
    if body.min_tokens and not body.ignore_eos:
        raise UnsupportedParameterError(
            "'min_tokens' is supported only together with 'ignore_eos'.", param="min_tokens"
        )
    stop = body.stop
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=0 if body.top_k is None or body.top_k < 0 else body.top_k,
        seed=None if body.seed is None else body.seed % _UINT64,
        stop=() if stop is None else (stop,) if isinstance(stop, str) else tuple(stop),
        ignore_eos=bool(body.ignore_eos),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def _stream_options(body: _Body) -> StreamOptions:
    if body.stream_options is None:
        return _NO_STREAM_OPTIONS
    if not body.stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    return body.stream_options


def _message(raw: MessageBody) -> ChatMessage:
    content = raw.content
    if content is None:  # an assistant's
        content = ""
    elif not isinstance(content, str):
        content = "".join(part.text for part in content)
    return ChatMessage(_TEMPLATE_ROLES[type(raw)], content, raw.name)


def chat_request(body: ChatCompletionBody) -> ChatCompletionRequest:
    """The validated chat request `body` asks for, or the OpenAI error for what it breaks."""
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError(
            "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs"
        )
    max_tokens = body.max_completion_tokens
    sampling = _sampling(
        body,
        max_tokens=body.max_tokens if max_tokens is None else max_tokens,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
    )
    return ChatCompletionRequest(
        model=body.model,
        messages=tuple(_message(m) for m in body.messages),
        sampling=sampling,
        stream=bool(body.stream),
        stream_options=_stream_options(body),
        add_generation_prompt=body.add_generation_prompt is not False,
    )


def _prompt(value: str | list[Any]) -> str | tuple[int, ...]:
    # A batch of one is the same as its only element.
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if not value:
        raise InvalidRequestError(
            "'prompt' must not be empty.", param="prompt", code="empty_prompt"
        )
    if isinstance(value, str):
        return value
    if all(isinstance(t, str) for t in value) or all(isinstance(t, list) for t in value):
        raise UnsupportedParameterError(
            "Batched prompts are not supported; send one prompt per request.", param="prompt"
        )
    for token in value:
        if not isinstance(token, int):
            raise InvalidTypeError(
                "Invalid type for 'prompt': expected a string or an array of token ids "
                f"(integers), but got {'string' if isinstance(token, str) else 'array'} instead.",
                param="prompt",
            )
    return tuple(value)


def completion_request(body: CompletionBody) -> CompletionRequest:
    """The validated completion request `body` asks for, or the OpenAI error for what it breaks."""
    prompt = _prompt(body.prompt)
    max_tokens = body.max_tokens
    sampling = _sampling(
        body,
        max_tokens=DEFAULT_COMPLETIONS_MAX_TOKENS if max_tokens is None else max_tokens,
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
    )
    return CompletionRequest(
        model=body.model,
        prompt=prompt,
        sampling=sampling,
        stream=bool(body.stream),
        stream_options=_stream_options(body),
        echo=bool(body.echo),
    )
