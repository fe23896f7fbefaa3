"""Generator against fake workers (real gRPC): migration, stop strings, the router contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from tandem.frontend.errors import (
    ContextLengthExceededError,
    EngineError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from tandem.frontend.generation import Generator
from tandem.frontend.job import GenerationJob, StepOutput, Usage
from tandem.frontend.metrics import FrontendMetrics
from tandem.frontend.request_types import SamplingOptions
from tandem.frontend.worker_client import WorkerClientPool
from tandem.runtime.tokenizer import Tokenizer
from tandem.runtime.wire import worker_pb2

from tests.support.frontend_fakes import FakeWorker, ListRouter, model_for


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
    job = GenerationJob(
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
    assert job.reported_usage().completion_tokens == len(tokens)
    assert job.reported_usage().cached_tokens == 3  # capped at the prompt length
    assert router.prefill_done_calls == 1 and router.freed == 1


async def test_worker_failure_migrates_with_generated_tokens(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    tokens = words(tokenizer, "one two three four five six seven eight nine ten")
    failing = FakeWorker(tokens, fail_after=4)
    healthy = FakeWorker(tokens)
    router = ListRouter({"a": await servers(failing), "b": await servers(healthy)})
    prompt = [1, 2, 3]
    job = GenerationJob(
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
    job = GenerationJob("r3", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=20))
    with pytest.raises(ServiceUnavailableError):
        await collect(generator, job)
    assert len(router.routed) == 3  # first try + max_migrations=2
    assert router.freed == 3


async def test_no_worker_is_service_unavailable(tokenizer: Tokenizer, generator: Generator) -> None:
    job = GenerationJob(
        "r4", model_for(tokenizer, ListRouter({})), [5], SamplingOptions(max_tokens=2)
    )
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
    job = GenerationJob("r5", model_for(tokenizer, router), [5], sampling)
    outputs = await collect(generator, job)
    assert "".join(t for out in outputs for t in out.texts) == "alpha beta "
    assert outputs[-1].finish_reason == "stop"
    assert job.reported_usage().completion_tokens < len(tokens)
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
    job = GenerationJob("r6", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=3))
    with pytest.raises(EngineError, match="boom"):
        await collect(generator, job)
    assert router.routed == ["a"]


async def test_trace_context_travels_to_the_worker(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    worker = FakeWorker([100, 101])
    router = ListRouter({"w": await servers(worker)})
    job = GenerationJob("r7", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=2))
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
        GenerationJob(f"s{i}", model, [5, i], SamplingOptions(max_tokens=len(tokens)))
        for i in range(8)
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
    jobs = [GenerationJob(f"m{i}", model, [5], SamplingOptions(max_tokens=10)) for i in range(3)]
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
    job = GenerationJob("r8", model_for(tokenizer, router), [5], SamplingOptions(max_tokens=4))
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


async def test_a_prompt_the_worker_refuses_is_a_bad_request_not_retried(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    refusing = FakeWorker([], reject=(grpc.StatusCode.INVALID_ARGUMENT, "token id out of range"))
    router = ListRouter({"a": await servers(refusing), "b": await servers(FakeWorker([7]))})
    job = GenerationJob("r9", model_for(tokenizer, router), [10**7], SamplingOptions(max_tokens=3))
    with pytest.raises(InvalidRequestError) as info:
        await collect(generator, job)
    assert info.value.status == 400
    assert info.value.message == "token id out of range"  # the worker's reason, as it said it
    assert info.value.param == "prompt"
    assert router.routed == ["a"] and router.freed == 1


async def test_a_prompt_over_the_context_is_context_length_exceeded(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    message = "This model's maximum context length is 8192 tokens. However, you requested 9000"
    refusing = FakeWorker([], reject=(grpc.StatusCode.OUT_OF_RANGE, message))
    router = ListRouter({"a": await servers(refusing)})
    model = model_for(tokenizer, router)
    given = GenerationJob("r10", model, [5], SamplingOptions(max_tokens=9000))
    with pytest.raises(ContextLengthExceededError) as info:
        await collect(generator, given)
    assert (info.value.status, info.value.code) == (400, "context_length_exceeded")
    assert info.value.message == message and info.value.param == "max_tokens"
    unbounded = GenerationJob("r11", model, [5], SamplingOptions(), length_param="messages")
    with pytest.raises(ContextLengthExceededError) as info:
        await collect(generator, unbounded)
    assert info.value.param == "messages"


async def test_no_max_tokens_leaves_the_limit_to_the_worker(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    worker = FakeWorker([100, 101, 102])
    router = ListRouter({"w": await servers(worker)})
    # A prompt longer than the card's context: the frontend does not judge it, the worker does.
    prompt = [5] * 9000
    job = GenerationJob("r12", model_for(tokenizer, router), prompt, SamplingOptions())
    outputs = await collect(generator, job)
    assert [t for out in outputs for t in out.token_ids] == [100, 101, 102]
    assert worker.received[0].sampling.max_tokens == 0  # up to the context length
    assert router.max_tokens == [0]  # the decode-load estimate: nothing left of the context


async def test_usage_is_the_workers_when_it_finished_the_request(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    reported = worker_pb2.Usage(prompt_tokens=40, completion_tokens=9, cached_tokens=32)
    router = ListRouter({"w": await servers(FakeWorker([100, 101], usage=reported))})
    job = GenerationJob("r13", model_for(tokenizer, router), [5, 6, 7], SamplingOptions())
    await collect(generator, job)
    assert job.reported_usage() == Usage(40, 9, 32)


async def test_usage_after_a_migration_counts_tokens_from_both_workers(
    tokenizer: Tokenizer, servers: Any, generator: Generator
) -> None:
    tokens = list(range(100, 110))
    router = ListRouter(
        {
            "a": await servers(FakeWorker(tokens, fail_after=4)),
            "b": await servers(FakeWorker(tokens)),
        }
    )
    job = GenerationJob("r14", model_for(tokenizer, router), [1, 2, 3], SamplingOptions())
    await collect(generator, job)
    assert job.reported_usage() == Usage(3, 10, 3)
    assert router.max_tokens == [8192 - 3, 8192 - 3 - 4]
