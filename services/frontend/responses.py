"""OpenAI responses for chat and text completions: one renderer per API, streaming or not.

A renderer writes both shapes of its API's answer: the SSE events of a
stream and the body of a non-streaming response. Streaming is the hot path:
each chunk's JSON is a precomputed prefix and suffix around the JSON-escaped
text, so a token costs one string escape and two concatenations; all events
of one worker message go out in one write.
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Sequence
from json.encoder import encode_basestring as _json_str  # type: ignore[attr-defined]
from typing import Any

from tandem.runtime.tokenizer import Tokenizer

from .job import StepOutput, TokenLogprob, Usage

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


def error_event(error: dict[str, Any]) -> bytes:
    return f"data: {_dumps(error)}\n\n".encode()


def _token_text(tokenizer: Tokenizer, token_id: int) -> tuple[str, list[int]]:
    raw = tokenizer.token_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


class BaseRenderer(abc.ABC):
    """Owns one response's id, timestamp and precomputed JSON pieces; renders its API's shapes.

    Streaming: `first()` once, `step()` per output, `usage()` when asked, then `DONE`.
    Non-streaming: `body()` once with everything the request produced.
    """

    # "data: " and the chunk's JSON up to its choices, the same for every event.
    _head: str

    def __init__(
        self, response_id: str, model: str, tokenizer: Tokenizer, created: int | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.response_id = response_id
        self.model = model
        self.created = created or int(time.time())

    def _event_head(self, chunk_object: str) -> str:
        return (
            f'data: {{"id":"{self.response_id}","object":"{chunk_object}",'
            f'"created":{self.created},"model":{_json_str(self.model)},"choices":'
        )

    @abc.abstractmethod
    def first(self) -> bytes:
        """The events that open a stream, before any generated text."""

    @abc.abstractmethod
    def step(self, out: StepOutput) -> bytes:
        """Events for one output: one per non-empty text piece (one per token with logprobs)."""

    @abc.abstractmethod
    def body(
        self,
        texts: list[str],
        logprobs: list[TokenLogprob] | None,
        finish_reason: str,
        usage: Usage,
    ) -> dict[str, Any]:
        """The non-streaming response; `texts` and `logprobs` as the outputs carried them."""

    def usage(self, usage: Usage) -> bytes:
        """The stream's usage event (`stream_options.include_usage`): empty choices."""
        return (self._head + "[]," + f'"usage":{_dumps(usage_dict(usage))}' + "}\n\n").encode()

    def _final(self, empty_choice: str, finish_reason: str) -> str:
        """The event carrying `finish_reason`, after a choice with no text."""
        return (
            self._head
            + empty_choice
            + ',"logprobs":null,"finish_reason":'
            + _json_str(finish_reason)
            + "}]}\n\n"
        )


class ChatRenderer(BaseRenderer):
    """Renders one chat completion: `chat.completion.chunk` events or a `chat.completion`."""

    def __init__(
        self, response_id: str, model: str, tokenizer: Tokenizer, created: int | None = None
    ) -> None:
        super().__init__(response_id, model, tokenizer, created)
        self._head = self._event_head("chat.completion.chunk")
        self._content_prefix = self._head + '[{"index":0,"delta":{"content":'
        self._content_suffix = '},"logprobs":null,"finish_reason":null}]}\n\n'

    def _logprobs(self, logprobs: list[TokenLogprob]) -> dict[str, Any]:
        tokenizer = self.tokenizer
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

    def first(self) -> bytes:
        return (
            self._head + '[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
            '"finish_reason":null}]}\n\n'
        ).encode()

    def step(self, out: StepOutput) -> bytes:
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
                    + _dumps(self._logprobs([lp]))
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
            events.append(self._final('[{"index":0,"delta":{}', out.finish_reason))
        return "".join(events).encode()

    def body(
        self,
        texts: list[str],
        logprobs: list[TokenLogprob] | None,
        finish_reason: str,
        usage: Usage,
    ) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(texts)},
                    "logprobs": None if logprobs is None else self._logprobs(logprobs),
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage_dict(usage),
        }


class CompletionRenderer(BaseRenderer):
    """Renders one text completion: `text_completion` events or body, with the echoed prompt.

    `echo` is the prompt to repeat before the completion (text or token ids), if asked.
    """

    def __init__(
        self,
        response_id: str,
        model: str,
        tokenizer: Tokenizer,
        created: int | None = None,
        echo: str | Sequence[int] | None = None,
    ) -> None:
        super().__init__(response_id, model, tokenizer, created)
        self._echo = echo
        self._head = self._event_head("text_completion")
        self._text_prefix = self._head + '[{"index":0,"text":'
        self._text_suffix = ',"logprobs":null,"finish_reason":null}]}\n\n'
        # Characters of text rendered so far: the next token's logprob text_offset.
        self._offset = 0

    def _echo_text(self) -> str:
        # Decoded only once the worker accepted the prompt (its ids are then in the vocabulary).
        echo = self._echo
        if echo is None:
            return ""
        return echo if isinstance(echo, str) else self.tokenizer.decode(echo)

    def _logprobs(
        self, logprobs: list[TokenLogprob], offset: int, texts: list[str]
    ) -> dict[str, Any]:
        tokenizer = self.tokenizer
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

    def first(self) -> bytes:
        text = self._echo_text()
        if not text:
            return b""
        self._offset += len(text)
        return (self._text_prefix + _json_str(text) + self._text_suffix).encode()

    def step(self, out: StepOutput) -> bytes:
        events: list[str] = []
        if out.logprobs is not None:
            texts = out.texts
            for i, lp in enumerate(out.logprobs):
                piece = texts[i] if i < len(texts) else ""
                logprobs = self._logprobs([lp], self._offset, [piece])
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
            events.append(self._final('[{"index":0,"text":""', out.finish_reason))
        return "".join(events).encode()

    def body(
        self,
        texts: list[str],
        logprobs: list[TokenLogprob] | None,
        finish_reason: str,
        usage: Usage,
    ) -> dict[str, Any]:
        prefix = self._echo_text()
        return {
            "id": self.response_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "text": prefix + "".join(texts),
                    "logprobs": None
                    if logprobs is None
                    else self._logprobs(logprobs, len(prefix), texts),
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage_dict(usage),
        }
