"""SSE chunks and response bodies: valid JSON in OpenAI's shapes, whatever the text holds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tandem.frontend.job import StepOutput, TokenLogprob, Usage
from tandem.frontend.responses import DONE, ChatRenderer, CompletionRenderer
from tandem.runtime.model_card import default_model_path
from tandem.runtime.tokenizer import Tokenizer

TRICKY = ['He said "hi"\n', "back\\slash\t", "ünïcödé 🤖", "</script>\u2028", ""]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(default_model_path())


def events(raw: bytes) -> list[Any]:
    text = raw.decode()
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: ")
        payload = block[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chat_chunks(tokenizer: Tokenizer) -> None:
    stream = ChatRenderer("chatcmpl-1", 'mo"del', tokenizer, created=7)
    [first] = events(stream.first())
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    step = events(stream.step(StepOutput([1, 2, 3, 4, 5], TRICKY)))
    # One event per non-empty piece, all in one write.
    assert [e["choices"][0]["delta"]["content"] for e in step] == TRICKY[:-1]
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == 'mo"del' for e in step)
    [last] = events(stream.step(StepOutput([], [], finish_reason="length")))
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    [usage] = events(stream.usage(Usage(10, 5, 4)))
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert events(DONE) == ["[DONE]"]


def test_chat_logprobs_one_event_per_token(tokenizer: Tokenizer) -> None:
    stream = ChatRenderer("chatcmpl-1", "m", tokenizer)
    ids = tokenizer.encode("🤖 hi")
    texts = [tokenizer.detokenizer().add_one(i) for i in ids]
    logprobs = [(i, -0.25, [(i, -0.25), (5, -3.0)]) for i in ids]
    step = events(stream.step(StepOutput(ids, texts, logprobs)))
    assert len(step) == len(ids)  # also for tokens holding half a character
    entry = step[0]["choices"][0]["logprobs"]["content"][0]
    assert entry["logprob"] == -0.25 and len(entry["top_logprobs"]) == 2
    assert bytes(b for e in step for b in e["choices"][0]["logprobs"]["content"][0]["bytes"]) == (
        "🤖 hi".encode()
    )


def test_completion_chunks(tokenizer: Tokenizer) -> None:
    stream = CompletionRenderer("cmpl-1", "m", tokenizer)
    assert stream.first() == b""
    step = events(stream.step(StepOutput([1, 2], ["a\n", '"b"'], finish_reason="stop")))
    assert [e["choices"][0]["text"] for e in step] == ["a\n", '"b"', ""]
    assert step[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(e["object"] == "text_completion" for e in step)


def test_bodies_and_echo_render_once_per_api(tokenizer: Tokenizer) -> None:
    usage = Usage(3, 2, 0)
    chat = ChatRenderer("chatcmpl-1", "m", tokenizer, created=7)
    body = chat.body(["a", "b"], None, "length", usage)
    assert body["object"] == "chat.completion" and body["created"] == 7
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "ab"}
    assert body["usage"]["total_tokens"] == 5
    ids = tokenizer.encode("Echo me")
    for echo in ("Echo me", ids):
        text = CompletionRenderer("cmpl-1", "m", tokenizer, echo=echo)
        logprobs: list[TokenLogprob] = [(5, -0.5, []), (6, -0.5, [])]
        [choice] = text.body(["x", "y"], logprobs, "stop", usage)["choices"]
        assert choice["text"] == "Echo mexy"
        assert choice["logprobs"]["text_offset"] == [7, 8]
        streamed = CompletionRenderer("cmpl-1", "m", tokenizer, echo=echo)
        [head] = events(streamed.first())
        assert head["choices"][0]["text"] == "Echo me"
