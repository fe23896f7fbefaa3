"""Every kind of bad OpenAI request gets the precise error (status, param, code)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tandem.frontend.endpoints import ChatEndpoint, CompletionEndpoint
from tandem.frontend.errors import (
    FrontendError,
    InvalidRequestError,
    InvalidTypeError,
    MalformedJsonError,
    UnsupportedParameterError,
)
from tandem.frontend.request_types import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
)

MSG = [{"role": "user", "content": "hi"}]


def parse_chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    return ChatEndpoint().parse(json.dumps(body).encode())


def parse_completion_request(body: dict[str, Any]) -> CompletionRequest:
    return CompletionEndpoint().parse(json.dumps(body).encode())


def parse_chat_request_raw(raw: bytes) -> ChatCompletionRequest:
    return ChatEndpoint().parse(raw)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MSG, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "hi", **fields}


def test_minimal_chat_request_has_openai_defaults() -> None:
    req = parse_chat_request(chat())
    assert req.model == "m"
    assert req.messages == (ChatMessage("user", "hi"),)
    assert req.sampling.max_tokens is None  # up to the context
    assert req.sampling.temperature == 1.0 and req.sampling.top_p == 1.0
    assert not req.stream and not req.stream_options.include_usage


def test_full_chat_request() -> None:
    req = parse_chat_request(
        chat(
            messages=[
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None},
            ],
            max_completion_tokens=7,
            max_tokens=99,
            temperature=0,
            top_p=0.5,
            top_k=-1,
            seed=-1,
            stop="\n",
            n=1,
            ignore_eos=True,
            logprobs=True,
            top_logprobs=3,
            stream=True,
            stream_options={"include_usage": True},
            user="u",
            frequency_penalty=0,
            presence_penalty=0.0,
            logit_bias={},
            response_format={"type": "text"},
        )
    )
    assert [m.role for m in req.messages] == ["system", "user", "assistant"]
    assert req.messages[1].content == "ab" and req.messages[2].content == ""
    s = req.sampling
    assert s.max_tokens == 7  # max_completion_tokens wins
    assert (s.temperature, s.top_p, s.top_k, s.stop, s.ignore_eos) == (0.0, 0.5, 0, ("\n",), True)
    assert s.seed == 2**64 - 1
    assert s.logprobs and s.top_logprobs == 3
    assert req.stream and req.stream_options.include_usage


def test_completion_prompt_forms() -> None:
    assert parse_completion_request(completion()).prompt == "hi"
    assert parse_completion_request(completion(prompt=[1, 2, 3])).prompt == (1, 2, 3)
    assert parse_completion_request(completion(prompt=["hi"])).prompt == "hi"
    assert parse_completion_request(completion(prompt=[[4, 5]])).prompt == (4, 5)
    req = parse_completion_request(completion(logprobs=2))
    assert req.sampling.max_tokens == 16  # the OpenAI default for completions
    assert req.sampling.logprobs and req.sampling.top_logprobs == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "parse"),
        (b"", "parse"),
        (b"[]", "object"),
        (b'"x"', "object"),
        (b"\xff\xfe", "parse"),
    ],
)
def test_malformed_json(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedJsonError, match=message) as info:
        ChatEndpoint().parse(raw)
    assert info.value.status == 400


CHAT_ERRORS: list[tuple[dict[str, Any], type[FrontendError], int, str | None]] = [
    # missing / wrong types -> 422
    ({"messages": MSG}, InvalidTypeError, 422, "model"),
    ({"model": 3, "messages": MSG}, InvalidTypeError, 422, "model"),
    ({"model": "m"}, InvalidTypeError, 422, "messages"),
    (chat(messages={"role": "user"}), InvalidTypeError, 422, "messages"),
    (chat(messages=["hi"]), InvalidTypeError, 422, "messages[0]"),
    (chat(messages=[{"content": "x"}]), InvalidTypeError, 422, "messages[0].role"),
    (chat(messages=[{"role": 1, "content": "x"}]), InvalidTypeError, 422, "messages[0].role"),
    (chat(messages=[{"role": "user"}]), InvalidTypeError, 422, "messages[0].content"),
    (chat(messages=[{"role": "user", "content": 5}]), InvalidTypeError, 422, "messages[0].content"),
    (
        chat(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]),
        InvalidTypeError,
        422,
        "messages[0].content[0].text",
    ),
    (chat(max_tokens="5"), InvalidTypeError, 422, "max_tokens"),
    (chat(max_tokens=5.5), InvalidTypeError, 422, "max_tokens"),
    (chat(max_tokens=True), InvalidTypeError, 422, "max_tokens"),
    (chat(temperature="hot"), InvalidTypeError, 422, "temperature"),
    (chat(top_p=[1]), InvalidTypeError, 422, "top_p"),
    (chat(seed=1.5), InvalidTypeError, 422, "seed"),
    (chat(stream="yes"), InvalidTypeError, 422, "stream"),
    (chat(stop=5), InvalidTypeError, 422, "stop"),
    (chat(stop=["a", 1]), InvalidTypeError, 422, "stop"),
    (chat(logprobs=1), InvalidTypeError, 422, "logprobs"),
    (chat(ignore_eos="true"), InvalidTypeError, 422, "ignore_eos"),
    (chat(stream=True, stream_options=[]), InvalidTypeError, 422, "stream_options"),
    # empty / unknown values -> 400
    (chat(messages=[]), InvalidRequestError, 400, "messages"),
    (
        chat(messages=[{"role": "wizard", "content": "x"}]),
        InvalidRequestError,
        400,
        "messages[0].role",
    ),
    (chat(max_tokens=0), InvalidRequestError, 400, "max_tokens"),
    (chat(max_completion_tokens=-3), InvalidRequestError, 400, "max_completion_tokens"),
    (chat(temperature=-0.1), InvalidRequestError, 400, "temperature"),
    (chat(temperature=2.01), InvalidRequestError, 400, "temperature"),
    (chat(top_p=0), InvalidRequestError, 400, "top_p"),
    (chat(top_p=1.01), InvalidRequestError, 400, "top_p"),
    (chat(top_k=-2), InvalidRequestError, 400, "top_k"),
    (chat(top_k=2**40), InvalidRequestError, 400, "top_k"),
    (chat(max_tokens=10**20), InvalidRequestError, 400, "max_tokens"),
    (chat(top_logprobs=21, logprobs=True), InvalidRequestError, 400, "top_logprobs"),
    (chat(top_logprobs=2), InvalidRequestError, 400, "top_logprobs"),
    (chat(stop=[""]), InvalidRequestError, 400, "stop"),
    (chat(stop=["x"] * 17), InvalidRequestError, 400, "stop"),
    (chat(stream_options={"include_usage": True}), InvalidRequestError, 400, "stream_options"),
    # unsupported -> 400
    (chat(n=2), UnsupportedParameterError, 400, "n"),
    (chat(frequency_penalty=0.5), UnsupportedParameterError, 400, "frequency_penalty"),
    (chat(presence_penalty=1), UnsupportedParameterError, 400, "presence_penalty"),
    (chat(logit_bias={"1": 5}), UnsupportedParameterError, 400, "logit_bias"),
    (chat(tools=[{"type": "function"}]), UnsupportedParameterError, 400, "tools"),
    (
        chat(response_format={"type": "json_object"}),
        UnsupportedParameterError,
        400,
        "response_format",
    ),
    (chat(min_tokens=5), UnsupportedParameterError, 400, "min_tokens"),
    (chat(wat=1), UnsupportedParameterError, 400, "wat"),
    (
        chat(stream=True, stream_options={"foo": True}),
        UnsupportedParameterError,
        400,
        "stream_options.foo",
    ),
    (
        chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        UnsupportedParameterError,
        400,
        "messages[0].content[0].type",
    ),
    (
        chat(messages=[{"role": "tool", "content": "x"}]),
        InvalidRequestError,
        400,
        "messages[0].role",
    ),
]


@pytest.mark.parametrize(("body", "error", "status", "param"), CHAT_ERRORS)
def test_chat_errors(
    body: dict[str, Any], error: type[FrontendError], status: int, param: str | None
) -> None:
    with pytest.raises(error) as info:
        parse_chat_request(body)
    assert info.value.status == status
    assert info.value.param == param
    payload = info.value.to_dict()["error"]
    assert set(payload) == {"message", "type", "param", "code"} and payload["message"]


COMPLETION_ERRORS: list[tuple[dict[str, Any], type[FrontendError], int, str | None]] = [
    ({"model": "m"}, InvalidTypeError, 422, "prompt"),
    (completion(prompt=5), InvalidTypeError, 422, "prompt"),
    (completion(prompt=[1, "a"]), InvalidTypeError, 422, "prompt"),
    (completion(prompt=[1, 2.5]), InvalidTypeError, 422, "prompt"),
    (completion(prompt=[True]), InvalidTypeError, 422, "prompt"),
    (completion(logprobs=True), InvalidTypeError, 422, "logprobs"),
    (completion(echo=1), InvalidTypeError, 422, "echo"),
    (completion(prompt=""), InvalidRequestError, 400, "prompt"),
    (completion(prompt=[]), InvalidRequestError, 400, "prompt"),
    (completion(prompt=[1, -1]), InvalidRequestError, 400, "prompt"),
    (completion(prompt=[1, 2**32]), InvalidRequestError, 400, "prompt"),  # past the wire's uint32
    (completion(prompt=["a", "b"]), UnsupportedParameterError, 400, "prompt"),
    (completion(prompt=[[1], [2]]), UnsupportedParameterError, 400, "prompt"),
    (completion(logprobs=6), InvalidRequestError, 400, "logprobs"),
    (completion(best_of=2), UnsupportedParameterError, 400, "best_of"),
    (completion(suffix="x"), UnsupportedParameterError, 400, "suffix"),
    (completion(messages=MSG), UnsupportedParameterError, 400, "messages"),
    (completion(max_tokens=0), InvalidRequestError, 400, "max_tokens"),
]


@pytest.mark.parametrize(("body", "error", "status", "param"), COMPLETION_ERRORS)
def test_completion_errors(
    body: dict[str, Any], error: type[FrontendError], status: int, param: str | None
) -> None:
    with pytest.raises(error) as info:
        parse_completion_request(body)
    assert info.value.status == status
    assert info.value.param == param


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": MSG}, "Missing required parameter: 'model'."),
        (
            chat(max_tokens="5"),
            "Invalid type for 'max_tokens': expected an integer, but got string instead.",
        ),
        (
            chat(stop=5),
            "Invalid type for 'stop': expected a string or an array of strings, "
            "but got integer instead.",
        ),
        (chat(max_tokens=0), "0 is less than the minimum of 1 - 'max_tokens'"),
        (chat(temperature=2.5), "2.5 is greater than the maximum of 2.0 - 'temperature'"),
        (chat(wat=1), "Unrecognized request argument supplied: wat"),
        (chat(n=3), "Only n=1 is supported."),
        (chat(presence_penalty=1), "'presence_penalty' is not supported by this server."),
        (
            chat(messages=[{"role": "wizard", "content": "x"}]),
            "Invalid value: 'wizard'. Supported values are: "
            "'system', 'developer', 'user', 'assistant'.",
        ),
        (chat(messages=[{"role": "user"}]), "Missing required parameter: 'messages[0].content'."),
    ],
)
def test_error_messages(body: dict[str, Any], message: str) -> None:
    with pytest.raises(FrontendError) as info:
        parse_chat_request(body)
    assert info.value.message == message


def test_json_schema_leniencies() -> None:
    # 16.0 is an integer in JSON Schema (the published schema), and null is "not given".
    req = parse_chat_request(chat(max_tokens=16.0, stream=None, temperature=None))
    assert req.sampling.max_tokens == 16 and not req.stream and req.sampling.temperature == 1.0
    assert parse_completion_request(completion(prompt=[1.0, 2])).prompt == (1, 2)
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(chat(stop=""))  # would stop every answer at once
    assert info.value.param == "stop"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
        b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "m", "messages": [], "user": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "m", "messages": [], "seed": ' + b"1" * 5000 + b"}",
    ],
)
def test_pathological_json_is_a_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request_raw(raw)
    assert info.value.status == 400 and info.value.message


def test_a_lone_surrogate_names_its_field() -> None:
    # Python's json reads "\ud800" as a str no UTF-8 can encode: it once reached the
    # tokenizer and was a 500.
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800"}]}'
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request_raw(raw)
    assert (info.value.status, info.value.param, info.value.code) == (
        400,
        "messages[0].content",
        "invalid_value",
    )
    assert "surrogate" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        CompletionEndpoint().parse(b'{"model": "m", "prompt": "x", "stop": ["\\udc00"]}')
    assert info.value.param == "stop"


def _random_value(rng: Any, depth: int = 0) -> Any:
    choices: list[Any] = [
        None, True, False, 0, 1, -1, 2**70, -(2**70), 0.5, -3.5, 1e308, float("nan"), "", "x",
        "user", "assistant", [], {}, [1, 2], ["a"], [[1]], {"type": "text", "text": "t"},
        {"include_usage": True},
    ]  # fmt: skip
    if depth < 2 and rng.random() < 0.2:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return rng.choice(choices)


def test_random_bodies_never_escape_as_unexpected_errors() -> None:
    import random

    from tandem.frontend.generation import generate_request
    from tandem.frontend.job import GenerationJob

    class _Tokenizer:
        vocab_size = 1000
        context_length = 4096
        eos_token_ids = (2,)

    class _Card:
        context_length = 4096
        eos_token_ids = (2,)

    class _Model:
        name = "m"
        tokenizer = _Tokenizer()
        card = _Card()
        context_length = 4096
        stop_token_ids = (2,)

    rng = random.Random(1)
    fields = ["max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream",
              "stream_options", "logprobs", "top_logprobs", "ignore_eos", "min_tokens",
              "max_completion_tokens", "frequency_penalty", "user"]  # fmt: skip
    for _ in range(3000):
        body: dict[str, Any] = {"model": "m", "messages": MSG, "prompt": [1, 2, 3]}
        for name in rng.sample(fields, rng.randrange(1, 5)):
            body[name] = _random_value(rng)
        if rng.random() < 0.3:
            body["messages"] = _random_value(rng)
        for parse in (parse_chat_request, parse_completion_request):
            candidate = dict(body)
            candidate.pop("prompt" if parse is parse_chat_request else "messages")
            try:
                request = parse(candidate)
                job = GenerationJob("r", _Model(), [1, 2, 3], request.sampling)  # type: ignore[arg-type]
                generate_request(job)  # the protobuf accepts every value that validated
            except FrontendError:
                pass
