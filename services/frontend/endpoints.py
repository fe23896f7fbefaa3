"""The OpenAI APIs the frontend serves, one endpoint object each: chat and text completions.

An endpoint is what differs between the APIs: how its body parses, how its
prompt becomes token ids, and which renderer writes its answer. The HTTP
server picks one per route when it adds the route, and runs every request
through the same steps.
"""

from __future__ import annotations

import abc
import asyncio
import functools
from typing import Any, Generic, TypeVar

from tandem.runtime.piece_encoder import TokenLimitExceeded, UnencodableTextError

from .errors import ContextLengthExceededError, InvalidRequestError
from .job import GenerationJob
from .models import ServedModel
from .request_errors import BodyDecoder
from .request_types import (
    ChatCompletionBody,
    ChatCompletionRequest,
    CompletionBody,
    CompletionRequest,
    OpenAIRequest,
    chat_request,
    completion_request,
)
from .responses import BaseRenderer, ChatRenderer, CompletionRenderer

# Prompts (and chat messages) longer than this are templated and tokenized off the event loop.
_THREAD_TOKENIZE_CHARS = 16_384

RequestT = TypeVar("RequestT", bound=OpenAIRequest)


async def encode(model: ServedModel, text: str, param: str) -> list[int]:
    """`text` (the request's field `param`) as token ids, within the model's prompt limit.

    A prompt known to be over the limit is refused before it is tokenized (its
    lower bound says so) or as soon as its tokens so far say so; a long one is
    tokenized in a thread, which the tokenizer lets the event loop run beside.
    """
    tokenizer = model.tokenizer
    limit = model.prompt_token_limit
    try:
        if len(text) > _THREAD_TOKENIZE_CHARS and tokenizer.min_tokens(text) <= limit:
            return await asyncio.to_thread(tokenizer.encode_at_most, text, limit)
        return tokenizer.encode_at_most(text, limit)  # short, or refused by its bound at once
    except TokenLimitExceeded as exc:
        raise _prompt_too_long(model, param, exc.at_least) from None
    except UnencodableTextError as exc:
        raise InvalidRequestError(str(exc), param=param, code="invalid_value") from None


def _within_limit(model: ServedModel, ids: list[int], param: str) -> list[int]:
    """`ids` as the prompt, if within the model's prompt limit."""
    if len(ids) > model.prompt_token_limit:
        raise _prompt_too_long(model, param, len(ids))
    return ids


def _prompt_too_long(model: ServedModel, param: str, at_least: int) -> ContextLengthExceededError:
    limit = model.prompt_token_limit
    what = (
        f"This model's maximum context length is {limit} tokens"
        if limit == model.context_length
        else f"This server accepts prompts of at most {limit} tokens"
    )
    return ContextLengthExceededError(
        f"{what}. However, your {param} resulted in at least {at_least} tokens. "
        f"Please reduce the length of the {param}.",
        param=param,
    )


class BaseEndpoint(abc.ABC, Generic[RequestT]):
    """One OpenAI API: its path, its request type, its prompt and its renderer."""

    # The route's name in metrics (`endpoint` label) and span names (`POST /v1/{name}`).
    name: str
    path: str
    # The request field that holds the prompt: the `param` of errors about it.
    prompt_param: str
    # The declared request body: its decoder, and the schema `/openapi.json` publishes.
    body: BodyDecoder[Any]

    @abc.abstractmethod
    def parse(self, raw: bytes) -> RequestT:
        """The typed request in the JSON body `raw`, or the OpenAI error for what is wrong."""

    @abc.abstractmethod
    async def prompt_ids(self, model: ServedModel, request: RequestT) -> list[int]:
        """The prompt as `model`'s token ids."""

    @abc.abstractmethod
    def renderer(self, job: GenerationJob, request: RequestT) -> BaseRenderer:
        """The renderer of this request's answer, streamed or not."""

    def job(
        self, request_id: str, model: ServedModel, prompt_ids: list[int], request: RequestT
    ) -> GenerationJob:
        """The request's job; errors a worker raises about it name this API's fields."""
        return GenerationJob(
            request_id,
            model,
            prompt_ids,
            request.sampling,
            prompt_param=self.prompt_param,
            # Completions always have a max_tokens (the API's default of 16 counts).
            length_param="max_tokens"
            if request.sampling.max_tokens is not None
            else self.prompt_param,
        )


class ChatEndpoint(BaseEndpoint[ChatCompletionRequest]):
    """`POST /v1/chat/completions`: messages through the model's chat template."""

    name = "chat"
    path = "/v1/chat/completions"
    prompt_param = "messages"
    body = BodyDecoder(ChatCompletionBody)

    def parse(self, raw: bytes) -> ChatCompletionRequest:
        return chat_request(self.body.decode(raw))

    async def prompt_ids(self, model: ServedModel, request: ChatCompletionRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        render = functools.partial(
            model.tokenizer.apply_chat_template,
            messages,
            add_generation_prompt=request.add_generation_prompt,
        )
        try:
            if sum(len(m.content) for m in request.messages) > _THREAD_TOKENIZE_CHARS:
                text = await asyncio.to_thread(render)
            else:
                text = render()
        except ValueError as exc:  # ChatTemplateError: the template refused the conversation
            raise InvalidRequestError(str(exc), param=self.prompt_param) from None
        return await encode(model, text, self.prompt_param)

    def renderer(self, job: GenerationJob, request: ChatCompletionRequest) -> BaseRenderer:
        return ChatRenderer(f"chatcmpl-{job.request_id}", job.model.name, job.model.tokenizer)


class CompletionEndpoint(BaseEndpoint[CompletionRequest]):
    """`POST /v1/completions`: a prompt string or token ids, optionally echoed."""

    name = "completions"
    path = "/v1/completions"
    prompt_param = "prompt"
    body = BodyDecoder(CompletionBody)

    def parse(self, raw: bytes) -> CompletionRequest:
        return completion_request(self.body.decode(raw))

    async def prompt_ids(self, model: ServedModel, request: CompletionRequest) -> list[int]:
        prompt = request.prompt
        if isinstance(prompt, str):
            return await encode(model, prompt, self.prompt_param)
        return _within_limit(model, list(prompt), self.prompt_param)

    def renderer(self, job: GenerationJob, request: CompletionRequest) -> BaseRenderer:
        return CompletionRenderer(
            f"cmpl-{job.request_id}",
            job.model.name,
            job.model.tokenizer,
            echo=request.prompt if request.echo else None,
        )


ENDPOINTS: tuple[BaseEndpoint[Any], ...] = (ChatEndpoint(), CompletionEndpoint())
