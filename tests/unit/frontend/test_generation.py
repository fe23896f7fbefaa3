"""Generator against fake workers (real gRPC): migration, stop strings, the router contract."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from tandem.frontend.errors import EngineError, ServiceUnavailableError
from tandem.frontend.generation import GenerationJob, Generator, StepOutput, make_job
from tandem.frontend.metrics import FrontendMetrics
from tandem.frontend.models import ServedModel
from tandem.frontend.openai_schema import SamplingOptions
from tandem.frontend.worker_client import WorkerClientPool
from tandem.router.api import BaseRouter, NoWorkersError, RouteResult
from tandem.runtime.model_card import ModelCard, default_model_path
from tandem.runtime.tokenizer import Tokenizer
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

from tests.support.fake_worker import serve_worker

LENGTH = worker_pb2.FINISH_REASON_LENGTH


@dataclass
class FakeWorker(worker_pb2_grpc.WorkerServicer):
    """Streams `tokens` one per message; fails with UNAVAILABLE after `fail_after` messages."""

    tokens: list[int]
    fail_after: int | None = None
    received: list[worker_pb2.GenerateRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        self.received.append(request)
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()})
        start = request.num_generated_before
        end = min(len(self.tokens), request.sampling.max_tokens)
        for i in range(start, end):
            if self.fail_after is not None and i - start >= self.fail_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "worker crashed")
            last = i == end - 1
            yield worker_pb2.GenerateResponse(
                token_ids=[self.tokens[i]],
                logprobs=[worker_pb2.TokenLogprob(token_id=self.tokens[i], logprob=-0.5)],
                finish_reason=LENGTH if last else 0,
                usage=worker_pb2.Usage(
                    prompt_tokens=len(request.token_ids), completion_tokens=i + 1, cached_tokens=16
                )
                if last
                else None,
            )


class ListRouter(BaseRouter):
    """Routes to the first endpoint not excluded; records the router contract calls."""

    def __init__(self, endpoints: dict[str, str]) -> None:
        self.endpoints = endpoints
        self.routed: list[str] = []
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
                return RouteResult(instance_id, endpoint)
        raise NoWorkersError("none left")

    def prefill_done(self, request_id: str) -> None:
        self.prefill_done_calls += 1

    def free(self, request_id: str) -> None:
        self.freed += 1


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(default_model_path())


@pytest.fixture
async def servers() -> AsyncIterator[Any]:
    started: list[grpc.aio.Server] = []

    async def serve(worker: FakeWorker) -> str:
        server, endpoint = await serve_worker(worker)
        started.append(server)
        return endpoint

    yield serve
    for server in started:
        await server.stop(None)


def model_for(tokenizer: Tokenizer, router: BaseRouter) -> ServedModel:
    card = ModelCard(
        name="m", model_path="", context_length=8192, block_size=16, eos_token_ids=(2,)
    )
    return ServedModel("m", card, tokenizer, workers=[], router=router)  # type: ignore[arg-type]


async def collect(generator: Generator, job: GenerationJob) -> list[StepOutput]:
    return [out async for out in generator.stream(job)]


def words(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text)


@pytest.fixture
def generator() -> Iterator[Generator]:
    yield Generator(WorkerClientPool(), FrontendMetrics(), max_migrations=2)


async def test_streams_text_usage_and_logprobs(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    tokens = words(tokenizer, "The sea is calm tonight 🌊 and blue.")
    endpoint = await servers(FakeWorker(tokens))
    router = ListRouter({"w1": endpoint})
    job = make_job(
        "r1",
        model_for(tokenizer, router),
        [1, 2, 3],
        SamplingOptions(max_tokens=100, logprobs=True),
    )
    outputs = await collect(generator, job)
    assert (
        "".join(t for out in outputs for t in out.texts) == "The sea is calm tonight 🌊 and blue."
    )
    assert outputs[-1].finish_reason == "length"
    assert sum(len(out.logprobs or []) for out in outputs) == len(tokens)
    assert generator.usage_of(job).completion_tokens == len(tokens)
    assert generator.usage_of(job).cached_tokens == 3  # capped at the prompt length
    assert router.prefill_done_calls == 1 and router.freed == 1


async def test_worker_failure_migrates_with_generated_tokens(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    tokens = words(tokenizer, "one two three four five six seven eight nine ten")
    failing = FakeWorker(tokens, fail_after=4)
    healthy = FakeWorker(tokens)
    router = ListRouter({"a": await servers(failing), "b": await servers(healthy)})
    prompt = [1, 2, 3]
    job = make_job(
        "r2", model_for(tokenizer, router), prompt, SamplingOptions(max_tokens=len(tokens))
    )
    outputs = await collect(generator, job)
    assert (
        "".join(t for out in outputs for t in out.texts)
        == "one two three four five six seven eight nine ten"
    )
    assert router.routed == ["a", "b"]
    assert router.freed == 2  # one free per route
    [moved] = healthy.received
    assert moved.num_generated_before == 4
    assert list(moved.token_ids) == prompt + tokens[:4]
    assert moved.sampling.max_tokens == len(tokens)  # counts the tokens generated before
    assert job.num_migrations == 1


async def test_gives_up_after_max_migrations(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    tokens = list(range(100, 120))
    router = ListRouter(
        {f"w{i}": await servers(FakeWorker(tokens, fail_after=1)) for i in range(5)}
    )
    job = make_job("r3", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=20))
    with pytest.raises(ServiceUnavailableError):
        await collect(generator, job)
    assert len(router.routed) == 3  # first try + max_migrations=2
    assert router.freed == 3


async def test_no_worker_is_service_unavailable(tokenizer: Tokenizer, generator: Generator) -> None:
    job = make_job("r4", model_for(tokenizer, ListRouter({})), [5], SamplingOptions(max_tokens=2))
    with pytest.raises(ServiceUnavailableError):
        await collect(generator, job)


async def test_stop_string_cuts_and_cancels(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    tokens = words(tokenizer, "alpha beta STOP gamma delta epsilon")
    worker = FakeWorker(tokens)
    router = ListRouter({"w": await servers(worker)})
    sampling = SamplingOptions(max_tokens=100, stop=("STOP",))
    job = make_job("r5", model_for(tokenizer, router), [5], sampling)
    outputs = await collect(generator, job)
    assert "".join(t for out in outputs for t in out.texts) == "alpha beta "
    assert outputs[-1].finish_reason == "stop"
    assert generator.usage_of(job).completion_tokens < len(tokens)
    assert router.freed == 1


async def test_engine_error_is_not_migrated(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    class ErrorWorker(FakeWorker):
        async def Generate(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
            yield worker_pb2.GenerateResponse(
                finish_reason=worker_pb2.FINISH_REASON_ERROR, error="boom"
            )

    router = ListRouter({"a": await servers(ErrorWorker([])), "b": await servers(FakeWorker([7]))})
    job = make_job("r6", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=3))
    with pytest.raises(EngineError, match="boom"):
        await collect(generator, job)
    assert router.routed == ["a"]


async def test_trace_context_travels_as_grpc_metadata(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    worker = FakeWorker([100, 101])
    router = ListRouter({"w": await servers(worker)})
    job = make_job("r7", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=2))
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    job.trace_metadata = (("traceparent", traceparent),)
    await collect(generator, job)
    assert worker.metadata[0]["traceparent"] == traceparent
