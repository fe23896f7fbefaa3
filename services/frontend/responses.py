"""OpenAI response bodies and SSE events for chat and text completions.

Streaming is the hot path: each chunk's JSON is a precomputed prefix and
suffix around the JSON-escaped text, so a token costs one string escape and
two concatenations; all events of one worker message go out in one write.
"""

from __future__ import annotations

import json
import time
from json.encoder import encode_basestring as _json_str  # type: ignore[attr-defined]
from typing import Any

from tandem.runtime.tokenizer import Tokenizer

from .generation import StepOutput, TokenLogprob, Usage

DONE = b"data: [DONE]\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _token_text(tokenizer: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    raw = tokenizer.token_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tokenizer: Tokenizer, logprobs: list[TokenLogprob]) -> dict[str, Any]:
    content = []
    for token_id, logprob, top in logprobs:
        text, raw = _token_text(tokenizer, token_id)
        alternatives = []
        for alt_id, alt_logprob in top:
            alt_text, alt_raw = _token_text(tokenizer, alt_id)
            alternatives.append({"token": alt_text, "logprob": alt_logprob, "bytes": alt_raw})
        content.append(
            {"token": text, "logprob": logprob, "bytes": raw, "top_logprobs": alternatives}
        )
    return {"content": content}


def completion_logprobs(
    tokenizer: Tokenizer, logprobs: list[TokenLogprob], offset: int, texts: list[str]
) -> dict[str, Any]:
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for i, (token_id, logprob, top) in enumerate(logprobs):
        tokens.append(_token_text(tokenizer, token_id)[0])
        token_logprobs.append(logprob)
        tops.append({_token_text(tokenizer, a)[0]: lp for a, lp in top})
        offsets.append(offset)
        offset += len(texts[i]) if i < len(texts) else 0
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


class _SseStream:
    """What chat and text completion streams render alike: the final event and the usage event."""

    _head: str

    def _final(self, empty_choice: str, finish_reason: str, usage: Usage | None) -> str:
        """The event carrying `finish_reason` (and usage, when asked), after a choice with no text."""
        usage_part = f',"usage":{_dumps(usage_dict(usage))}' if usage is not None else ""
        return (
            self._head
            + empty_choice
            + ',"logprobs":null,"finish_reason":'
            + _json_str(finish_reason)
            + "}]"
            + usage_part
            + "}\n\n"
        )

    def usage(self, usage: Usage) -> bytes:
        return (self._head + "[]," + f'"usage":{_dumps(usage_dict(usage))}' + "}\n\n").encode()


class ChatStream(_SseStream):
    """Renders one chat completion's SSE events."""

    def __init__(
        self, response_id: str, model: str, tokenizer: Tokenizer, created: int | None = None
    ) -> None:
        self.tokenizer = tokenizer
        head = (
            f'{{"id":"{response_id}","object":"chat.completion.chunk",'
            f'"created":{created or int(time.time())},'
            f'"model":{_json_str(model)},"choices":'
        )
        self._head = "data: " + head
        self._content_prefix = self._head + '[{"index":0,"delta":{"content":'
        self._content_suffix = '},"logprobs":null,"finish_reason":null}]}\n\n'

    def first(self) -> bytes:
        return (
            self._head + '[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            '"finish_reason":null}]}\n\n'
        ).encode()

    def step(self, out: StepOutput, usage: Usage | None = None) -> bytes:
        """Events for one output: one per non-empty text piece (one per token with logprobs)."""
        events: list[str] = []
        if out.logprobs is not None:
            texts = out.texts
            for i, lp in enumerate(out.logprobs):
                piece = texts[i] if i < len(texts) else ""
                events.append(
                    self._head
                    + '[{"index":0,"delta":{"content":'
                    + _json_str(piece)
                    + '},"logprobs":'
                    + _dumps(chat_logprobs(self.tokenizer, [lp]))
                    + ',"finish_reason":null}]}\n\n'
                )
            extra = out.texts[len(out.logprobs) :]
        else:
            extra = out.texts
        prefix, suffix = self._content_prefix, self._content_suffix
        for piece in extra:
            if piece:
                events.append(prefix + _json_str(piece) + suffix)
        if out.finish_reason is not None:
            events.append(self._final('[{"index":0,"delta":{}', out.finish_reason, usage))
        return "".join(events).encode()


class CompletionStream(_SseStream):
    """Renders one text completion's SSE events."""

    def __init__(
        self, response_id: str, model: str, tokenizer: Tokenizer, created: int | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self._head = (
            f'data: {{"id":"{response_id}","object":"text_completion",'
            f'"created":{created or int(time.time())},"model":{_json_str(model)},"choices":'
        )
        self._text_prefix = self._head + '[{"index":0,"text":'
        self._text_suffix = ',"logprobs":null,"finish_reason":null}]}\n\n'
        self._offset = 0

    def first(self) -> bytes:
        return b""

    def text(self, text: str) -> bytes:
        self._offset += len(text)
        return (self._text_prefix + _json_str(text) + self._text_suffix).encode()

    def step(self, out: StepOutput, usage: Usage | None = None) -> bytes:
        events: list[str] = []
        if out.logprobs is not None:
            texts = out.texts
            for i, lp in enumerate(out.logprobs):
                piece = texts[i] if i < len(texts) else ""
                logprobs = completion_logprobs(self.tokenizer, [lp], self._offset, [piece])
                self._offset += len(piece)
                events.append(
                    self._head
                    + '[{"index":0,"text":'
                    + _json_str(piece)
                    + ',"logprobs":'
                    + _dumps(logprobs)
                    + ',"finish_reason":null}]}\n\n'
                )
            extra = out.texts[len(out.logprobs) :]
        else:
            extra = out.texts
        prefix, suffix = self._text_prefix, self._text_suffix
        for piece in extra:
            if piece:
                self._offset += len(piece)
                events.append(prefix + _json_str(piece) + suffix)
        if out.finish_reason is not None:
            events.append(self._final('[{"index":0,"text":""', out.finish_reason, usage))
        return "".join(events).encode()


def error_event(error: dict[str, Any]) -> bytes:
    return f"data: {_dumps(error)}\n\n".encode()


def chat_completion(
    response_id: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str,
    usage: Usage,
    logprobs: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_dict(usage),
    }


def text_completion(
    response_id: str,
    model: str,
    created: int,
    text: str,
    finish_reason: str,
    usage: Usage,
    logprobs: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
        "usage": usage_dict(usage),
    }
