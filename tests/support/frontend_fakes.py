"""Fakes for frontend tests: a scripted worker behind real gRPC, a list router, a model and
the registry of a frontend serving only it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field

import grpc
from tandem.frontend.errors import ModelNotFoundError
from tandem.frontend.models import ServedModel
from tandem.router.api import BaseRouter, NoWorkersError, RouteResult
from tandem.runtime.model_card import ModelCard
from tandem.runtime.tokenizer import Tokenizer
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc
from tandem.worker.generate_stream import RequestFailed, serve_generate_stream

LENGTH = worker_pb2.FINISH_REASON_LENGTH


@dataclass
class FakeWorker(worker_pb2_grpc.WorkerServicer):
    """Streams `tokens` one per message; fails with UNAVAILABLE after `fail_after` messages.

    With `gate` set, it waits for the gate after `gate_after` tokens of each request.
    With `reject` set, it refuses every request with that status before any output,
    as a worker does a request it cannot serve. `usage` replaces the final usage.
    """

    tokens: list[int]
    fail_after: int | None = None
    gate: asyncio.Event | None = None
    gate_after: int = 1
    reject: tuple[grpc.StatusCode, str] | None = None
    usage: worker_pb2.Usage | None = None
    received: list[worker_pb2.GenerateRequest] = field(default_factory=list)
    trace_contexts: list[dict[str, str]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    any_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0

    async def GenerateStream(self, requests, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls += 1
        await serve_generate_stream(requests, context, self.responses)

    def final_usage(self, request: worker_pb2.GenerateRequest, generated: int) -> worker_pb2.Usage:
        if self.usage is not None:
            return self.usage
        # As a worker counts: tokens migrated in are output, not prompt.
        return worker_pb2.Usage(
            prompt_tokens=len(request.token_ids) - request.num_generated_before,
            completion_tokens=generated,
            cached_tokens=16,
        )

    async def responses(
        self, request: worker_pb2.GenerateRequest, trace_context: Mapping[str, str]
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        self.received.append(request)
        self.trace_contexts.append(dict(trace_context))
        if self.reject is not None:
            raise RequestFailed(*self.reject)
        start = request.num_generated_before
        # max_tokens 0: up to the context, here all of `tokens`.
        end = min(len(self.tokens), request.sampling.max_tokens or len(self.tokens))
        try:
            for i in range(start, end):
                if self.fail_after is not None and i - start >= self.fail_after:
                    raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "worker crashed")
                if self.gate is not None and i - start >= self.gate_after:
                    await self.gate.wait()
                last = i == end - 1
                yield worker_pb2.GenerateResponse(
                    token_ids=[self.tokens[i]],
                    logprobs=[worker_pb2.TokenLogprob(token_id=self.tokens[i], logprob=-0.5)],
                    finish_reason=LENGTH if last else 0,
                    usage=self.final_usage(request, i + 1) if last else None,
                )
                await asyncio.sleep(0)  # let other requests' outputs join the same write
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            self.any_cancelled.set()
            raise


class ListRouter(BaseRouter):
    """Routes to the first endpoint not excluded; records the router contract calls."""

    def __init__(self, endpoints: dict[str, str]) -> None:
        self.endpoints = endpoints
        self.routed: list[str] = []
        self.max_tokens: list[int] = []
        self.freed = 0
        self.prefill_done_calls = 0

    async def route(
        self,
        request_id: str,
        token_ids: list[int],
        *,
        exclude: Collection[str] = (),
        max_tokens: int = 0,
    ) -> RouteResult:
        for instance_id, endpoint in self.endpoints.items():
            if instance_id not in exclude:
                self.routed.append(instance_id)
                self.max_tokens.append(max_tokens)
                return RouteResult(instance_id, endpoint)
        raise NoWorkersError("none left")

    def prefill_done(self, request_id: str) -> None:
        self.prefill_done_calls += 1

    def free(self, request_id: str) -> None:
        self.freed += 1


def model_for(tokenizer: Tokenizer, router: BaseRouter, name: str = "m") -> ServedModel:
    """A served model with an 8192-token context, no live worker view, and `router`."""
    card = ModelCard(
        name=name, model_path="", context_length=8192, block_size=16, eos_token_ids=(2,)
    )
    return ServedModel(name, card, tokenizer, workers=[], router=router)  # type: ignore[arg-type]


class OneModel:
    """The model registry of a frontend serving one model (no etcd: other names are 404)."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model

    def get(self, name: str) -> ServedModel | None:
        return self.model if name == self.model.name else None

    async def lookup(self, name: str) -> ServedModel:
        if name != self.model.name:
            raise ModelNotFoundError(f"The model '{name}' does not exist.", param="model")
        return self.model

    def served(self) -> list[ServedModel]:
        return [self.model]

    def known(self) -> list[ServedModel]:
        return [self.model]
