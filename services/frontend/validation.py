"""JSON body -> typed request, with the precise OpenAI error for every bad input.

Wrong JSON types and missing required fields raise `InvalidTypeError` (422);
values out of range, empty messages, unknown roles and unsupported
parameters raise `InvalidRequestError` subclasses (400). What needs the model
(an empty tokenized prompt, token ids outside its vocabulary, the context
length) the worker checks; the frontend relays its verdict as a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from .errors import (
    InvalidRequestError,
    InvalidTypeError,
    UnsupportedParameterError,
)
from .json_fields import JsonFields, is_number, wrong_type
from .openai_schema import (
    DEFAULT_COMPLETIONS_MAX_TOKENS,
    MAX_LOGPROBS_COMPLETIONS,
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS_CHAT,
    ROLES,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    Role,
    SamplingOptions,
    StreamOptions,
)

_UINT64 = 2**64
# Token ids travel as uint32; the worker checks them against the vocabulary.
_MAX_TOKEN_ID = 2**32 - 1
# Counts travel as uint32 on the wire; larger values are never meaningful.
_INT32_MAX = 2**31 - 1
# Accepted only at their no-op value; anything else is a feature we do not have.
_NO_OP_PARAMS: dict[str, Callable[[Any], bool]] = {
    "frequency_penalty": lambda v: v is None or (is_number(v) and v == 0),
    "presence_penalty": lambda v: v is None or (is_number(v) and v == 0),
    "repetition_penalty": lambda v: v is None or (is_number(v) and v == 1),
    "logit_bias": lambda v: v is None or v == {},
    "best_of": lambda v: v is None or v == 1,
    "suffix": lambda v: v is None or v == "",
    "tools": lambda v: v is None or v == [],
    "functions": lambda v: v is None or v == [],
    "tool_choice": lambda v: v is None or v == "none",
    "function_call": lambda v: v is None or v == "none",
    "response_format": lambda v: v is None or v == {"type": "text"},
}
_IGNORED_PARAMS = frozenset({"user", "parallel_tool_calls", "store", "metadata", "service_tier"})
_COMMON_PARAMS = (
    frozenset(
        {
            "model",
            "stream",
            "stream_options",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "seed",
            "stop",
            "n",
            "ignore_eos",
            "min_tokens",
            "logprobs",
        }
    )
    | _IGNORED_PARAMS
    | frozenset(_NO_OP_PARAMS)
)
_CHAT_PARAMS = _COMMON_PARAMS | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "add_generation_prompt",
}
_COMPLETION_PARAMS = _COMMON_PARAMS | {"prompt", "echo"}


def _check_params(body: dict[str, Any], known: frozenset[str]) -> None:
    for name, value in body.items():
        if name not in known:
            raise UnsupportedParameterError(
                f"Unrecognized request argument supplied: {name}", param=name
            )
        accepts = _NO_OP_PARAMS.get(name)
        if accepts is not None and not accepts(value):
            raise UnsupportedParameterError(
                f"'{name}' is not supported by this server.", param=name
            )


def _parse_stop(fields: JsonFields) -> tuple[str, ...]:
    value = fields.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise wrong_type("stop", "a string or an array of strings", value)
    if len(value) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(
            f"'stop' may hold at most {MAX_STOP_SEQUENCES} sequences.", param="stop"
        )
    for item in value:
        if not isinstance(item, str):
            raise wrong_type("stop", "a string or an array of strings", item)
        if not item:
            raise InvalidRequestError("'stop' sequences must not be empty.", param="stop")
    return tuple(value)


def _parse_common(
    fields: JsonFields, *, max_tokens: int | None, logprobs: bool, top_logprobs: int
) -> SamplingOptions:
    n = fields.integer("n")
    if n is not None and n != 1:
        raise UnsupportedParameterError("Only n=1 is supported.", param="n")
    ignore_eos = fields.boolean("ignore_eos")
    min_tokens = fields.integer("min_tokens", lo=0, hi=_INT32_MAX)
    if min_tokens and not ignore_eos:
        raise UnsupportedParameterError(
            "'min_tokens' is supported only together with 'ignore_eos'.", param="min_tokens"
        )
    seed = fields.integer("seed")
    temperature = fields.number("temperature", 0.0, 2.0)
    top_p = fields.number("top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise InvalidRequestError(
            "'top_p' must be greater than 0.", param="top_p", code="invalid_value"
        )
    top_k = fields.integer("top_k", lo=-1, hi=_INT32_MAX)
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=0 if top_k is None or top_k < 0 else top_k,
        seed=None if seed is None else seed % _UINT64,
        stop=_parse_stop(fields),
        ignore_eos=ignore_eos,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def _parse_stream(fields: JsonFields) -> tuple[bool, StreamOptions]:
    stream = fields.boolean("stream")
    raw = fields.get("stream_options")
    if raw is None:
        return stream, StreamOptions()
    if not isinstance(raw, dict):
        raise wrong_type("stream_options", "an object", raw)
    if not stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    for key in raw:
        if key != "include_usage":
            raise UnsupportedParameterError(
                f"Unrecognized stream option: {key}", param=f"stream_options.{key}"
            )
    options = JsonFields(raw)
    return stream, StreamOptions(
        include_usage=options.boolean("include_usage"),
    )


def _message_content(value: Any, param: str, role: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        if role == "assistant":
            return ""
        raise InvalidTypeError(
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            part_param = f"{param}[{i}]"
            if not isinstance(part, dict):
                raise wrong_type(part_param, "an object", part)
            kind = part.get("type")
            if kind != "text":
                raise UnsupportedParameterError(
                    f"Content part type {kind!r} is not supported; only 'text'.",
                    param=f"{part_param}.type",
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise wrong_type(f"{part_param}.text", "a string", text)
            texts.append(text)
        return "".join(texts)
    raise wrong_type(param, "a string or an array of content parts", value)


def _canonical_role(role: str) -> Role:
    # "developer" is OpenAI's newer name for "system"; chat templates know only the latter.
    if role == "developer":
        return "system"
    return cast(Role, role)


def _parse_messages(value: Any) -> tuple[ChatMessage, ...]:
    if value is None:
        raise InvalidTypeError(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(value, list):
        raise wrong_type("messages", "an array", value)
    if not value:
        raise InvalidRequestError(
            "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    messages = []
    for i, raw in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(raw, dict):
            raise wrong_type(param, "an object", raw)
        role = raw.get("role")
        if role is None:
            raise InvalidTypeError(
                f"Missing required parameter: '{param}.role'.",
                param=f"{param}.role",
                code="missing_required_parameter",
            )
        if not isinstance(role, str):
            raise wrong_type(f"{param}.role", "a string", role)
        if role not in ROLES:
            raise InvalidRequestError(
                f"Invalid value: '{role}'. Supported values are: "
                f"{', '.join(repr(r) for r in ROLES)}.",
                param=f"{param}.role",
                code="invalid_value",
            )
        if raw.get("tool_calls"):
            raise UnsupportedParameterError(
                "Tool calls are not supported.", param=f"{param}.tool_calls"
            )
        content = _message_content(raw.get("content"), f"{param}.content", role)
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise wrong_type(f"{param}.name", "a string", name)
        messages.append(ChatMessage(role=_canonical_role(role), content=content, name=name))
    return tuple(messages)


def parse_chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    _check_params(body, _CHAT_PARAMS)
    fields = JsonFields(body)
    model = fields.string("model", required=True)
    messages = _parse_messages(body.get("messages"))
    max_tokens = fields.integer("max_tokens", lo=1, hi=_INT32_MAX)
    max_completion_tokens = fields.integer("max_completion_tokens", lo=1, hi=_INT32_MAX)
    logprobs = fields.boolean("logprobs")
    top_logprobs = fields.integer("top_logprobs", 0, MAX_TOP_LOGPROBS_CHAT)
    if top_logprobs and not logprobs:
        raise InvalidRequestError(
            "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs"
        )
    sampling = _parse_common(
        fields,
        max_tokens=max_completion_tokens if max_completion_tokens is not None else max_tokens,
        logprobs=logprobs,
        top_logprobs=top_logprobs or 0,
    )
    stream, stream_options = _parse_stream(fields)
    return ChatCompletionRequest(
        model=model or "",
        messages=messages,
        sampling=sampling,
        stream=stream,
        stream_options=stream_options,
        add_generation_prompt=fields.boolean("add_generation_prompt", default=True),
    )


def _parse_prompt(value: Any) -> str | tuple[int, ...]:
    if value is None:
        raise InvalidTypeError(
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    # A batch of one is the same as its only element.
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str | list) and not value:
        raise InvalidRequestError(
            "'prompt' must not be empty.", param="prompt", code="empty_prompt"
        )
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(isinstance(t, str) for t in value) or all(isinstance(t, list) for t in value):
            raise UnsupportedParameterError(
                "Batched prompts are not supported; send one prompt per request.", param="prompt"
            )
        for token in value:
            if not isinstance(token, int) or isinstance(token, bool):
                raise wrong_type("prompt", "a string or an array of token ids (integers)", token)
            if token < 0:
                raise InvalidRequestError(
                    f"Token id {token} in 'prompt' is negative.",
                    param="prompt",
                    code="invalid_value",
                )
            if token > _MAX_TOKEN_ID:
                raise InvalidRequestError(
                    f"Token id {token} in 'prompt' is out of range.",
                    param="prompt",
                    code="invalid_value",
                )
        return tuple(value)
    raise wrong_type("prompt", "a string or an array of token ids", value)


def parse_completion_request(body: dict[str, Any]) -> CompletionRequest:
    _check_params(body, _COMPLETION_PARAMS)
    fields = JsonFields(body)
    model = fields.string("model", required=True)
    prompt = _parse_prompt(body.get("prompt"))
    max_tokens = fields.integer("max_tokens", lo=1, hi=_INT32_MAX)
    logprobs = fields.integer("logprobs", 0, MAX_LOGPROBS_COMPLETIONS)
    sampling = _parse_common(
        fields,
        max_tokens=DEFAULT_COMPLETIONS_MAX_TOKENS if max_tokens is None else max_tokens,
        logprobs=logprobs is not None,
        top_logprobs=logprobs or 0,
    )
    stream, stream_options = _parse_stream(fields)
    return CompletionRequest(
        model=model or "",
        prompt=prompt,
        sampling=sampling,
        stream=stream,
        stream_options=stream_options,
        echo=fields.boolean("echo"),
    )
