"""The KServe v2 service in-process, through the real `tritonclient` gRPC (aio) client: a
fake worker behind real gRPC, the frontend's real generator, keys, limit and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from tandem.frontend.api_keys import ApiKeys
from tandem.frontend.generation import Generator
from tandem.frontend.kserve.inference import KserveInference
from tandem.frontend.kserve.server import KserveServer
from tandem.frontend.kserve.service import InferenceService
from tandem.frontend.metrics import FrontendMetrics
from tandem.frontend.request_limits import ConcurrencyLimit
from tandem.frontend.worker_client import WorkerClientPool
from tandem.runtime.tokenizer import Tokenizer
from tritonclient.utils import InferenceServerException

from tests.support.frontend_fakes import FakeWorker, ListRouter, OneModel, model_for

TOKENS = [100, 101, 102, 103]
KEY = "sk-kserve-unit"
MAX_REQUEST_BYTES = 1 << 20


@dataclass
class Served:
    client: triton.InferenceServerClient
    worker: FakeWorker
    metrics: FrontendMetrics
    tokenizer: Tokenizer
    port: int

    def text(self, count: int) -> str:
        """What the worker's first `count` tokens decode to."""
        return self.tokenizer.decode(TOKENS[:count])


async def _serve(
    tokenizer: Tokenizer,
    servers: Any,
    worker: FakeWorker | None,
    keys: tuple[str, ...] = (),
    limit: int = 64,
    tracer: Any = None,
) -> AsyncIterator[Served]:
    endpoints = {"w": await servers(worker)} if worker is not None else {}
    model = model_for(tokenizer, ListRouter(endpoints))
    model.workers = list(endpoints)  # type: ignore[assignment]  # live workers: ready if any
    metrics = FrontendMetrics()
    inference = KserveInference(
        OneModel(model),  # type: ignore[arg-type]
        Generator(WorkerClientPool(), metrics),
        metrics,
        ConcurrencyLimit(limit),
        tracer,
    )
    server = KserveServer(InferenceService(inference, ApiKeys(keys)), MAX_REQUEST_BYTES)
    await server.start("127.0.0.1", 0)
    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        yield Served(client, worker or FakeWorker([]), metrics, tokenizer, server.port)
    finally:
        await client.close()
        await server.stop()


@pytest.fixture
async def served(tokenizer: Tokenizer, servers: Any) -> AsyncIterator[Served]:
    async for s in _serve(tokenizer, servers, FakeWorker(TOKENS)):
        yield s


_DTYPES = {"INT32": np.int32, "BOOL": np.bool_, "FP32": np.float32, "UINT64": np.uint64}


def inputs(text: str = "Hello", **controls: tuple[str, Any]) -> list[triton.InferInput]:
    """text_input plus each control as (datatype, value), one element each."""
    prompt = triton.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    tensors = [prompt]
    for name, (datatype, value) in controls.items():
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value], dtype=_DTYPES[datatype]))
        tensors.append(tensor)
    return tensors


def output_text(result: Any) -> str:
    values = result.as_numpy("text_output")
    assert values.shape == (1,)
    return str(values[0].decode())


def is_final(result: Any) -> bool:
    return bool(result.get_response().parameters["triton_final_response"].bool_param)


def requests_total(metrics: FrontendMetrics, endpoint: str, status: str, model: str = "m") -> float:
    value = metrics.registry.get_sample_value(
        "tandem_frontend_requests_total", {"endpoint": endpoint, "model": model, "status": status}
    )
    return value or 0.0


async def refused(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        await call
    return info.value


async def stream(
    client: triton.InferenceServerClient, *requests: dict[str, Any], **kw: Any
) -> list[tuple[Any, InferenceServerException | None]]:
    """Every (result, error) a ModelStreamInfer call answers `requests` with, until it ends."""

    return [item async for item in client.stream_infer(_iterate(*requests), **kw)]


async def test_live_ready_and_metadata(served: Served) -> None:
    client = served.client
    assert await client.is_server_live() and await client.is_server_ready()
    assert await client.is_model_ready("m") and await client.is_model_ready("m", "1")
    assert not await client.is_model_ready("nope") and not await client.is_model_ready("m", "2")
    meta = await client.get_model_metadata("m", as_json=True)
    assert meta["name"] == "m" and meta["versions"] == ["1"] and meta["platform"] == "tandem"
    tensors = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]}
    assert tensors["text_input"] == ("BYTES", ["1"]) and tensors["max_tokens"] == ("INT32", ["1"])
    assert tensors["stream"] == ("BOOL", ["1"]) and tensors["stop_words"] == ("BYTES", ["-1"])
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("text_output", "BYTES")]
    assert (await client.get_server_metadata(as_json=True))["name"] == "tandem"


async def test_infer_returns_the_generated_text(served: Served) -> None:
    result = await served.client.infer(
        "m",
        inputs("Hello", max_tokens=("INT32", 3), temperature=("FP32", 0.0), top_k=("INT32", 5)),
        request_id="r-1",
    )
    assert output_text(result) == served.text(3)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("r-1", "m", "1")
    sent = served.worker.received[-1]
    assert (sent.sampling.max_tokens, sent.sampling.temperature, sent.sampling.top_k) == (3, 0, 5)
    assert list(sent.token_ids) == served.tokenizer.encode("Hello")
    assert requests_total(served.metrics, "kserve_infer", "success") == 1


async def test_infer_can_put_the_prompt_before_the_answer(served: Served) -> None:
    result = await served.client.infer(
        "m", inputs("Hi", max_tokens=("INT32", 2), exclude_input_in_output=("BOOL", False))
    )
    assert output_text(result) == "Hi" + served.text(2)


async def test_stream_infer_answers_a_response_per_chunk_as_the_tokens_come(
    tokenizer: Tokenizer, servers: Any
) -> None:
    gate = asyncio.Event()
    # The worker sends its first token, then waits: the first response must arrive alone.
    async for s in _serve(tokenizer, servers, FakeWorker(TOKENS, gate=gate, gate_after=1)):
        request = {"model_name": "m", "inputs": inputs(stream=("BOOL", True)), "request_id": "s-1"}
        answers = s.client.stream_infer(_iterate(request))
        first, error = await anext(answers)
        assert error is None and output_text(first) == s.text(1) and not is_final(first)
        gate.set()
        rest = [result async for result, _ in answers]
        assert "".join(output_text(r) for r in [first, *rest]) == s.text(len(TOKENS))
        assert [is_final(r) for r in rest][-1] and not any(is_final(r) for r in rest[:-1])
        assert {r.get_response().id for r in [first, *rest]} == {"s-1"}
        assert requests_total(s.metrics, "kserve_stream_infer", "success") == 1


async def _iterate(*requests: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for request in requests:
        yield request


async def test_stream_infer_with_an_empty_final_response(served: Served) -> None:
    """tritonclient's sync client (its only one with `enable_empty_final_response`), in a
    thread while the server runs on this loop."""
    results = await asyncio.to_thread(_stream_with_empty_final, served.port)
    *chunks, last = results
    assert "".join(output_text(r) for r in chunks) == served.text(len(TOKENS))
    assert chunks and not any(is_final(r) for r in chunks)
    assert is_final(last) and last.as_numpy("text_output") is None


def _stream_with_empty_final(port: int) -> list[Any]:
    import queue

    import tritonclient.grpc as triton_sync

    got: queue.Queue[Any] = queue.Queue()
    client = triton_sync.InferenceServerClient(f"127.0.0.1:{port}")
    client.start_stream(callback=lambda result, error: got.put(error or result))
    prompt = triton_sync.InferInput("text_input", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"Hello"], dtype=np.object_))
    stream_flag = triton_sync.InferInput("stream", [1], "BOOL")
    stream_flag.set_data_from_numpy(np.array([True]))
    client.async_stream_infer("m", [prompt, stream_flag], enable_empty_final_response=True)
    results: list[Any] = []
    try:
        while not results or not is_final(results[-1]):
            item = got.get(timeout=30)
            assert not isinstance(item, Exception), item
            results.append(item)
    finally:
        client.stop_stream()
        client.close()
    return results


async def test_stream_infer_without_stream_answers_once_and_serves_requests_side_by_side(
    served: Served,
) -> None:
    requests = [
        {"model_name": "m", "inputs": inputs(max_tokens=("INT32", n)), "request_id": f"n{n}"}
        for n in (1, 2, 3)
    ]
    bad = {"model_name": "m", "inputs": inputs(max_tokens=("INT32", 0)), "request_id": "bad"}
    answers = await stream(served.client, *requests, bad)
    texts = {r.get_response().id: output_text(r) for r, e in answers if e is None}
    assert texts == {f"n{n}": served.text(n) for n in (1, 2, 3)}
    errors = [e for _, e in answers if e is not None]
    # A bad request on the stream is answered with its error; the others go on.
    assert len(errors) == 1 and "'max_tokens' must be in [1," in str(errors[0].message())


async def test_bad_requests_get_their_status_codes(served: Served) -> None:
    client = served.client
    cases = [
        (client.infer("m", inputs()[:0] + [_max_tokens(2)]), "INVALID_ARGUMENT", "missing"),
        (client.infer("m", inputs(max_tokens=("FP32", 2.0))), "INVALID_ARGUMENT", "INT32"),
        (client.infer("m", inputs(stream=("BOOL", True))), "INVALID_ARGUMENT", "ModelStreamInfer"),
        (client.infer("nope", inputs()), "NOT_FOUND", "does not exist"),
        (client.infer("m", inputs(), model_version="7"), "NOT_FOUND", "no version '7'"),
        (client.get_model_metadata("nope"), "NOT_FOUND", "does not exist"),
        (client.infer("m", inputs("x" * MAX_REQUEST_BYTES)), "RESOURCE_EXHAUSTED", ""),
    ]
    for call, status, words in cases:
        error = await refused(call)
        assert error.status() == f"StatusCode.{status}", (status, error.message())
        assert words in str(error.message())
    # Refused before the model was known (as the HTTP API counts them).
    assert requests_total(served.metrics, "kserve_infer", "400", model="") == 3
    assert requests_total(served.metrics, "kserve_infer", "404", model="") == 2


def _max_tokens(value: int) -> triton.InferInput:
    tensor = triton.InferInput("max_tokens", [1], "INT32")
    tensor.set_data_from_numpy(np.array([value], dtype=np.int32))
    return tensor


async def test_a_request_the_worker_refuses_is_invalid_argument(
    tokenizer: Tokenizer, servers: Any
) -> None:
    worker = FakeWorker(TOKENS, reject=(grpc.StatusCode.OUT_OF_RANGE, "prompt too long"))
    async for s in _serve(tokenizer, servers, worker):
        error = await refused(s.client.infer("m", inputs()))
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        assert "prompt too long" in str(error.message())


async def test_no_worker_is_unavailable(tokenizer: Tokenizer, servers: Any) -> None:
    async for s in _serve(tokenizer, servers, None):
        assert not await s.client.is_server_ready() and not await s.client.is_model_ready("m")
        error = await refused(s.client.infer("m", inputs()))
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert requests_total(s.metrics, "kserve_infer", "503") == 1


async def test_api_keys_in_the_call_metadata(tokenizer: Tokenizer, servers: Any) -> None:
    async for s in _serve(tokenizer, servers, FakeWorker(TOKENS), keys=(KEY,)):
        client = s.client
        assert await client.is_server_live() and await client.is_server_ready()  # open
        for headers in (None, {"authorization": "Bearer sk-wrong"}):
            for call in (
                client.infer("m", inputs(), headers=headers),
                client.get_model_metadata("m", headers=headers),
                client.is_model_ready("m", headers=headers),
            ):
                assert (await refused(call)).status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(grpc.aio.AioRpcError) as info:  # the aio client raises it as is
            await stream(client, {"model_name": "m", "inputs": inputs()})
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        good = {"authorization": f"Bearer {KEY}"}
        result = await client.infer("m", inputs(max_tokens=("INT32", 1)), headers=good)
        assert output_text(result) == s.text(1)
        rejected = s.metrics.registry.get_sample_value(
            "tandem_frontend_rejected_requests_total", {"reason": "unauthorized"}
        )
        assert rejected == 7


async def test_beyond_the_concurrency_limit_resource_exhausted(
    tokenizer: Tokenizer, servers: Any
) -> None:
    gate = asyncio.Event()
    worker = FakeWorker(TOKENS, gate=gate, gate_after=1)
    async for s in _serve(tokenizer, servers, worker, limit=1):
        held = asyncio.create_task(s.client.infer("m", inputs()))
        while not worker.received:  # the first request holds the one place
            await asyncio.sleep(0.01)
        error = await refused(s.client.infer("m", inputs()))
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "limit of 1 concurrent requests" in str(error.message())
        gate.set()
        assert output_text(await held) == s.text(len(TOKENS))


async def test_the_clients_trace_context_reaches_the_worker(served: Served) -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await served.client.infer(
        "m", inputs(max_tokens=("INT32", 1)), headers={"traceparent": traceparent}
    )
    assert served.worker.trace_contexts[-1].get("traceparent") == traceparent


async def test_with_tracing_the_worker_gets_our_span_under_the_clients_trace(
    tokenizer: Tokenizer, servers: Any
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    trace_id, client_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    worker = FakeWorker(TOKENS)
    async for s in _serve(tokenizer, servers, worker, tracer=provider.get_tracer("t")):
        headers = {"traceparent": f"00-{trace_id}-{client_span}-01"}
        await s.client.infer("m", inputs(max_tokens=("INT32", 1)), headers=headers)
    (span,) = spans.get_finished_spans()
    assert span.name == "KServe ModelInfer"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == client_span
    assert f"{span.context.trace_id:032x}" == trace_id
    ours = f"00-{trace_id}-{span.context.span_id:016x}-01"
    assert worker.trace_contexts[-1]["traceparent"] == ours
