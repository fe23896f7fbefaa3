"""The prompt path: a prompt over the limit is refused early, client text is never a 500."""

from __future__ import annotations

import dataclasses
import time

import pytest
from tandem.frontend.endpoints import ChatEndpoint, CompletionEndpoint
from tandem.frontend.errors import ContextLengthExceededError, InvalidRequestError
from tandem.frontend.models import ServedModel
from tandem.frontend.request_types import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingOptions,
)
from tandem.runtime.tokenizer import Tokenizer

from tests.support.frontend_fakes import ListRouter, model_for

CHAT, COMPLETIONS = ChatEndpoint(), CompletionEndpoint()


def served(tokenizer: Tokenizer, max_prompt_tokens: int = 0, context: int = 8192) -> ServedModel:
    """The bundled tokenizer with a `context`-token context."""
    model = model_for(tokenizer, ListRouter({}))
    card = dataclasses.replace(model.card, context_length=context)
    return dataclasses.replace(model, card=card, max_prompt_tokens=max_prompt_tokens)


def chat(content: str) -> ChatCompletionRequest:
    return ChatCompletionRequest("m", (ChatMessage("user", content),), SamplingOptions())


def completion(prompt: str | tuple[int, ...]) -> CompletionRequest:
    return CompletionRequest("m", prompt, SamplingOptions())


async def test_a_prompt_that_fits_is_tokenized_exactly(tokenizer: Tokenizer) -> None:
    # Long enough for the thread and for several chunks.
    text = "Some words, some digits 12345; and new lines.\n" * 5000
    ids = await COMPLETIONS.prompt_ids(served(tokenizer, context=131_072), completion(text))
    assert ids == tokenizer.backend.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("size", [100_000, 10_000_000])
async def test_a_prompt_over_the_context_is_refused_without_tokenizing_it(
    tokenizer: Tokenizer, size: int
) -> None:
    text = ("The quick brown fox jumps over the lazy dog. " * (size // 45 + 1))[:size]
    started = time.monotonic()
    for endpoint, request in ((COMPLETIONS, completion(text)), (CHAT, chat(text))):
        with pytest.raises(ContextLengthExceededError) as refused:
            await endpoint.prompt_ids(served(tokenizer), request)
        error = refused.value
        assert (error.status, error.param) == (400, endpoint.prompt_param)
        assert error.message.startswith("This model's maximum context length is 8192 tokens.")
    # Tokenizing 10 MB took 9 s; a refusal takes what 8192 tokens' worth of text takes.
    assert time.monotonic() - started < 5.0


async def test_max_prompt_tokens_limits_text_and_token_id_prompts(tokenizer: Tokenizer) -> None:
    model = served(tokenizer, max_prompt_tokens=4)
    assert await COMPLETIONS.prompt_ids(model, completion((1, 2, 3, 4))) == [1, 2, 3, 4]
    for request in (completion("one two three four five six"), completion((1, 2, 3, 4, 5))):
        with pytest.raises(ContextLengthExceededError) as refused:
            await COMPLETIONS.prompt_ids(model, request)
        assert refused.value.param == "prompt"
        assert "accepts prompts of at most 4 tokens" in refused.value.message


async def test_a_lone_surrogate_is_a_400_naming_the_prompt(tokenizer: Tokenizer) -> None:
    model = served(tokenizer)
    for endpoint, request in (
        (COMPLETIONS, completion("hi \ud800")),
        (COMPLETIONS, completion("x" * 20_000 + "\udfff")),  # tokenized in a thread
        (CHAT, chat("\ud800")),
    ):
        with pytest.raises(InvalidRequestError) as refused:
            await endpoint.prompt_ids(model, request)
        error = refused.value
        assert (error.status, error.param, error.code) == (
            400,
            endpoint.prompt_param,
            "invalid_value",
        )
        assert "lone surrogate" in error.message
