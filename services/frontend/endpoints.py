"""The OpenAI APIs the frontend serves, one endpoint object each: chat and text completions.

An endpoint is what differs between the APIs: how its body parses, how its
prompt becomes token ids, and which renderer writes its answer. The HTTP
server picks one per route when it adds the route, and runs every request
through the same steps.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any, Generic, TypeVar

from .errors import InvalidRequestError
from .job import GenerationJob
from .models import ServedModel
from .openai_schema import ChatCompletionRequest, CompletionRequest, OpenAIRequest
from .responses import BaseRenderer, ChatRenderer, CompletionRenderer
from .validation import parse_chat_request, parse_completion_request

# Prompts longer than this are tokenized off the event loop.
_THREAD_TOKENIZE_CHARS = 16_384

RequestT = TypeVar("RequestT", bound=OpenAIRequest)


async def encode(model: ServedModel, text: str) -> list[int]:
    """`text` as token ids; a long text is tokenized in a thread."""
    if len(text) > _THREAD_TOKENIZE_CHARS:
        return await asyncio.to_thread(model.tokenizer.encode, text)
    return model.tokenizer.encode(text)


class BaseEndpoint(abc.ABC, Generic[RequestT]):
    """One OpenAI API: its path, its request type, its prompt and its renderer."""

    # The route's name in metrics (`endpoint` label) and span names (`POST /v1/{name}`).
    name: str
    path: str
    # The request field that holds the prompt: the `param` of errors about it.
    prompt_param: str

    @abc.abstractmethod
    def parse(self, body: dict[str, Any]) -> RequestT:
        """The typed request, or the OpenAI error for what is wrong with `body`."""

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

    def parse(self, body: dict[str, Any]) -> ChatCompletionRequest:
        return parse_chat_request(body)

    async def prompt_ids(self, model: ServedModel, request: ChatCompletionRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            text = model.tokenizer.apply_chat_template(
                messages, add_generation_prompt=request.add_generation_prompt
            )
        except ValueError as exc:  # ChatTemplateError: the template refused the conversation
            raise InvalidRequestError(str(exc), param="messages") from None
        return await encode(model, text)

    def renderer(self, job: GenerationJob, request: ChatCompletionRequest) -> BaseRenderer:
        return ChatRenderer(f"chatcmpl-{job.request_id}", job.model.name, job.model.tokenizer)


class CompletionEndpoint(BaseEndpoint[CompletionRequest]):
    """`POST /v1/completions`: a prompt string or token ids, optionally echoed."""

    name = "completions"
    path = "/v1/completions"
    prompt_param = "prompt"

    def parse(self, body: dict[str, Any]) -> CompletionRequest:
        return parse_completion_request(body)

    async def prompt_ids(self, model: ServedModel, request: CompletionRequest) -> list[int]:
        prompt = request.prompt
        if isinstance(prompt, str):
            return await encode(model, prompt)
        return list(prompt)

    def renderer(self, job: GenerationJob, request: CompletionRequest) -> BaseRenderer:
        return CompletionRenderer(
            f"cmpl-{job.request_id}",
            job.model.name,
            job.model.tokenizer,
            echo=request.prompt if request.echo else None,
        )


ENDPOINTS: tuple[BaseEndpoint[Any], ...] = (ChatEndpoint(), CompletionEndpoint())
