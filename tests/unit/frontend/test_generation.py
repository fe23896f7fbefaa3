"""Generator against fake workers (real gRPC): migration, stop strings, the router contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
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
from tandem.worker.generate_stream import RequestFailed, serve_generate_stream

from tests.support.fake_worker import serve_worker

LENGTH = worker_pb2.FINISH_REASON_LENGTH


@dataclass
class FakeWorker(worker_pb2_grpc.WorkerServicer):
    """Streams `tokens` one per message; fails with UNAVAILABLE after `fail_after` messages.

    With `gate` set, it waits for the gate after `gate_after` tokens of each request.
    """

    tokens: list[int]
    fail_after: int | None = None
    gate: asyncio.Event | None = None
    gate_after: int = 1
    received: list[worker_pb2.GenerateRequest] = field(default_factory=list)
    trace_contexts: list[dict[str, str]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    any_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0

    async def GenerateStream(self, requests, context):  # type: ignore[no-untyped-def]  # noqa: N802
        self.calls += 1
        await serve_generate_stream(requests, context, self.responses)

    async def responses(
        self, request: worker_pb2.GenerateRequest, trace_context: Mapping[str, str]
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        self.received.append(request)
        self.trace_contexts.append(dict(trace_context))
        start = request.num_generated_before
        end = min(len(self.tokens), request.sampling.max_tokens)
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
                    usage=worker_pb2.Usage(
                        prompt_tokens=len(request.token_ids),
                        completion_tokens=i + 1,
                        cached_tokens=16,
                    )
                    if last
                    else None,
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
    # It holds the tokens after STOP back until the frontend has cancelled the request.
    worker = FakeWorker(
        tokens, gate=asyncio.Event(), gate_after=len(words(tokenizer, "alpha beta STOP"))
    )
    router = ListRouter({"w": await servers(worker)})
    sampling = SamplingOptions(max_tokens=100, stop=("STOP",))
    job = make_job("r5", model_for(tokenizer, router), [5], sampling)
    outputs = await collect(generator, job)
    assert "".join(t for out in outputs for t in out.texts) == "alpha beta "
    assert outputs[-1].finish_reason == "stop"
    assert generator.usage_of(job).completion_tokens < len(tokens)
    assert router.freed == 1
    await asyncio.wait_for(worker.any_cancelled.wait(), 10)
    assert worker.cancelled == ["r5"]  # the worker stopped generating it


async def test_engine_error_is_not_migrated(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    class ErrorWorker(FakeWorker):
        async def responses(self, request, trace_context):  # type: ignore[no-untyped-def]
            yield worker_pb2.GenerateResponse(
                finish_reason=worker_pb2.FINISH_REASON_ERROR, error="boom"
            )

    router = ListRouter({"a": await servers(ErrorWorker([])), "b": await servers(FakeWorker([7]))})
    job = make_job("r6", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=3))
    with pytest.raises(EngineError, match="boom"):
        await collect(generator, job)
    assert router.routed == ["a"]


async def test_trace_context_travels_to_the_worker(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    worker = FakeWorker([100, 101])
    router = ListRouter({"w": await servers(worker)})
    job = make_job("r7", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=2))
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    job.trace_metadata = (("traceparent", traceparent),)
    await collect(generator, job)
    assert worker.trace_contexts[0]["traceparent"] == traceparent


async def test_requests_share_one_stream_per_worker(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    tokens = list(range(100, 132))
    worker = FakeWorker(tokens)
    router = ListRouter({"w": await servers(worker)})
    model = model_for(tokenizer, router)
    jobs = [
        make_job(f"s{i}", model, [5, i], SamplingOptions(max_tokens=len(tokens))) for i in range(8)
    ]
    results = await asyncio.gather(*(collect(generator, job) for job in jobs))
    for outputs in results:
        assert [t for out in outputs for t in out.token_ids] == tokens
        assert outputs[-1].finish_reason == "length"
    assert worker.calls == 1
    assert sorted(r.request_id for r in worker.received) == [f"s{i}" for i in range(8)]


async def test_a_broken_stream_migrates_every_request_on_it(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    tokens = list(range(100, 110))
    stuck = FakeWorker(tokens, gate=asyncio.Event())  # never opened: it hangs after 1 token
    healthy = FakeWorker(tokens)
    router = ListRouter({"a": await servers(stuck), "b": await servers(healthy)})
    model = model_for(tokenizer, router)
    jobs = [make_job(f"m{i}", model, [5], SamplingOptions(max_tokens=10)) for i in range(3)]
    tasks = [asyncio.create_task(collect(generator, job)) for job in jobs]
    while not all(job.generated for job in jobs):  # each has its first token from "a"
        await asyncio.sleep(0.01)
    await generator._pool.drop(router.endpoints["a"])  # the stream to "a" breaks
    for outputs in await asyncio.gather(*tasks):
        assert [t for out in outputs for t in out.token_ids] == tokens
    assert sorted(r.request_id for r in healthy.received) == ["m0", "m1", "m2"]
    assert all(r.num_generated_before == 1 for r in healthy.received)


@dataclass
class PacedWorker(FakeWorker):
    """Sends each token only when the test asks for one, so every token is its own delivery."""

    asks: asyncio.Queue[None] = field(default_factory=asyncio.Queue)

    async def responses(  # type: ignore[override]
        self, request: worker_pb2.GenerateRequest, trace_context: Mapping[str, str]
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        async for response in super().responses(request, trace_context):
            await self.asks.get()
            yield response


async def test_inter_token_latency_is_observed_per_delivery(
    tokenizer: Tokenizer, servers: Any
) -> None:
    metrics = FrontendMetrics()
    generator = Generator(WorkerClientPool(), metrics, max_migrations=2)
    worker = PacedWorker([100, 101, 102, 103])
    router = ListRouter({"w": await servers(worker)})
    job = make_job("r8", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=4))
    stream = generator.stream(job)
    started = time.monotonic()
    for _ in range(4):
        worker.asks.put_nowait(None)
        out = await anext(stream)
    elapsed = time.monotonic() - started
    assert out.finish_reason == "length"
    await stream.aclose()

    def sample(suffix: str) -> float:
        value = metrics.registry.get_sample_value(
            f"tandem_frontend_inter_token_latency_seconds_{suffix}", {"model": "m"}
        )
        return float(value or 0.0)

    assert sample("count") == 3  # one per delivery after the first, not one per request
    assert 0 < sample("sum") <= elapsed
