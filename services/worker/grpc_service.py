"""The `tandem.v1.Worker` gRPC service: protobuf at the edge, engine types inside."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.trace import SpanKind, Tracer
from tandem.runtime.tracing import context_from_metadata
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

from .admission import ContextLengthError
from .engine import (
    BaseEngine,
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineStoppedError,
    PushEngine,
    SamplingConfig,
    listened,
)
from .generate_stream import Emit, RequestFailed, serve_generate_stream
from .kv_publisher import KvEventPublisher
from .metrics import WorkerMetrics

if TYPE_CHECKING:
    from .disagg.decode_side import DecodeCoordinator

log = logging.getLogger(__name__)

_FINISH = {
    None: worker_pb2.FINISH_REASON_UNSPECIFIED,
    "stop": worker_pb2.FINISH_REASON_STOP,
    "length": worker_pb2.FINISH_REASON_LENGTH,
    "abort": worker_pb2.FINISH_REASON_ABORT,
    "error": worker_pb2.FINISH_REASON_ERROR,
}


def to_engine_request(msg: worker_pb2.GenerateRequest) -> EngineRequest:
    p = msg.sampling
    sampling = SamplingConfig(
        temperature=p.temperature,
        top_p=p.top_p if p.top_p > 0 else 1.0,
        top_k=p.top_k,
        seed=p.seed if p.HasField("seed") else None,
        max_tokens=p.max_tokens,  # 0: up to the context length
        stop_token_ids=tuple(p.stop_token_ids),
        ignore_eos=p.ignore_eos,
        logprobs=p.logprobs,
        top_logprobs=p.top_logprobs,
    )
    return EngineRequest(
        request_id=msg.request_id,
        token_ids=list(msg.token_ids),
        sampling=sampling,
        num_generated_before=msg.num_generated_before,
    )


def status_of(exc: EngineError) -> grpc.StatusCode:
    """The gRPC status a rejected request ends with (the frontend maps each to an OpenAI 400)."""
    if isinstance(exc, ContextLengthError):
        return grpc.StatusCode.OUT_OF_RANGE
    if isinstance(exc, EngineStoppedError):
        return (
            grpc.StatusCode.UNAVAILABLE
        )  # not the request's fault: the frontend retries elsewhere
    return grpc.StatusCode.INVALID_ARGUMENT


def to_response(out: EngineOutput) -> worker_pb2.GenerateResponse:
    resp = worker_pb2.GenerateResponse(
        token_ids=out.token_ids, finish_reason=_FINISH[out.finish_reason]
    )
    if out.logprobs:
        resp.logprobs.extend(
            worker_pb2.TokenLogprob(
                token_id=lp.token_id,
                logprob=lp.logprob,
                top=[worker_pb2.TopLogprob(token_id=t, logprob=v) for t, v in lp.top],
            )
            for lp in out.logprobs
        )
    if out.usage is not None:
        u = out.usage
        resp.usage.CopyFrom(
            worker_pb2.Usage(
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                cached_tokens=u.cached_tokens,
            )
        )
    if out.error:
        resp.error = out.error
    return resp


def response_fields(out: EngineOutput) -> worker_pb2.GenerateResponse | dict[str, Any]:
    """`out` as what a `StreamOutput.response` is built from: a plain step's tokens as a dict
    (protobuf builds the sub-message from it at half the cost of a message and its copy)."""
    if out.finish_reason is None and not out.logprobs and not out.error:
        return {"token_ids": out.token_ids}
    return to_response(out)


TraceContext = Mapping[str, str] | Iterable[tuple[str, str | bytes]]


def _headers(trace_context: TraceContext) -> dict[str, str]:
    """Trace context as NATS headers (a prefill job carries the request's trace on)."""
    items = trace_context.items() if isinstance(trace_context, Mapping) else trace_context
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in items}


class _RequestRecord:
    """One request's metrics, load pokes and span on this worker, from arrival to end."""

    __slots__ = ("_service", "_span", "_start", "_first", "closed")

    def __init__(
        self,
        service: WorkerService,
        request: worker_pb2.GenerateRequest,
        trace_context: TraceContext,
    ) -> None:
        self._service = service
        tracer = service.tracer
        self._span = (
            None
            if tracer is None
            else tracer.start_span(
                "Worker.Generate",
                context=context_from_metadata(trace_context),
                kind=SpanKind.SERVER,
                attributes={
                    "tandem.request_id": request.request_id,
                    "tandem.instance_id": service.instance_id,
                },
            )
        )
        self._start = time.monotonic()
        self._first = True
        self.closed = False
        service.metrics.in_flight.inc()
        service.num_in_flight += 1
        service.on_load_change()

    def output(self, out: EngineOutput) -> None:
        m = self._service.metrics
        if self._first and out.token_ids:
            m.prefill_latency.observe(time.monotonic() - self._start)
            self._first = False
        m.num_generated_tokens += len(out.token_ids)
        if out.finish_reason is not None and out.usage is not None:
            m.prompt_tokens.inc(out.usage.prompt_tokens)
            m.cached_tokens.inc(out.usage.cached_tokens)

    def close(self, finish: str) -> None:
        if self.closed:
            return
        self.closed = True
        m = self._service.metrics
        m.in_flight.dec()
        self._service.num_in_flight -= 1
        m.requests.labels(finish).inc()
        if self._span is not None:
            self._span.set_attribute("tandem.finish_reason", finish)
            self._span.end()
        m.request_latency.observe(time.monotonic() - self._start)
        self._service.on_load_change()


class WorkerService(worker_pb2_grpc.WorkerServicer):
    """Serves one engine; `on_load_change` is called when requests start or end."""

    def __init__(
        self,
        instance_id: str,
        engine: BaseEngine,
        publisher: KvEventPublisher,
        metrics: WorkerMetrics,
        on_load_change: Callable[[], None] = lambda: None,
        tracer: Tracer | None = None,
    ) -> None:
        self.tracer = tracer
        self.instance_id = instance_id
        self.engine = engine
        self.publisher = publisher
        self.metrics = metrics
        self.ready = False
        self.num_in_flight = 0  # requests started and not ended: what a drain waits for
        self.on_load_change = on_load_change
        # A decode worker's remote prefills (disagg/decode_side.py); None: every request
        # is prefilled here, `remote_prefill` or not.
        self.remote_prefill: DecodeCoordinator | None = None

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: worker_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        responses = self.responses(request, context.invocation_metadata() or ())
        async with contextlib.aclosing(responses):  # type: ignore[type-var]
            try:
                async for response in responses:
                    yield response
            except RequestFailed as exc:
                await context.abort(exc.code, exc.message)

    async def GenerateStream(  # noqa: N802
        self,
        requests: AsyncIterator[worker_pb2.StreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        # An engine that pushes its outputs is served without a task per request.
        start = self.start if isinstance(self.engine, PushEngine) else None
        await serve_generate_stream(requests, context, self.responses, start)

    def _check(self, request: worker_pb2.GenerateRequest) -> None:
        if not self.ready:
            raise RequestFailed(grpc.StatusCode.UNAVAILABLE, "worker is not serving")
        if request.model and request.model != self.engine.model_name:
            raise RequestFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"model {request.model!r} is not served here ({self.engine.model_name!r})",
            )

    def _rejected(self, request: worker_pb2.GenerateRequest, exc: EngineError) -> RequestFailed:
        extra = {"request_id": request.request_id, "instance_id": self.instance_id}
        log.info("rejected: %s", exc, extra=extra)
        return RequestFailed(status_of(exc), str(exc))

    async def responses(
        self, request: worker_pb2.GenerateRequest, trace_context: TraceContext
    ) -> AsyncIterator[worker_pb2.GenerateResponse]:
        """One request's responses, for Generate (and GenerateStream on a pull engine).

        Raises RequestFailed when the request cannot be served here. Closing the
        iterator early (client cancel) aborts the request and frees its blocks.
        """
        self._check(request)
        record = _RequestRecord(self, request, trace_context)
        finish = "abort"
        remote = self.remote_prefill
        if remote is not None and request.HasField("remote_prefill"):
            engine_request = to_engine_request(request)
            stream = listened(
                lambda listener: remote.submit(
                    request, engine_request, listener, _headers(trace_context)
                )
            )
        else:
            stream = self.engine.generate(to_engine_request(request))
        try:
            try:
                async for out in stream:
                    record.output(out)
                    if out.finish_reason is not None:
                        finish = out.finish_reason
                    yield to_response(out)
            except EngineError as exc:
                finish = "invalid"
                raise self._rejected(request, exc) from None
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()  # on cancel: the engine aborts and frees blocks now
            record.close(finish)

    def start(
        self, request: worker_pb2.GenerateRequest, trace_context: TraceContext, emit: Emit
    ) -> Callable[[], None]:
        """Start one request on a `PushEngine`; its responses go to `emit`. Returns its abort.

        The same checks, metrics and span as `responses()`; raises RequestFailed.
        """
        self._check(request)
        assert isinstance(self.engine, PushEngine)
        record = _RequestRecord(self, request, trace_context)

        def on_output(out: EngineOutput) -> None:
            record.output(out)
            emit(response_fields(out), out.finish_reason is not None)
            if out.finish_reason is not None:
                record.close(out.finish_reason)

        try:
            if self.remote_prefill is not None and request.HasField("remote_prefill"):
                abort = self.remote_prefill.submit(
                    request, to_engine_request(request), on_output, _headers(trace_context)
                )
            else:
                abort = self.engine.submit(to_engine_request(request), on_output)
        except EngineError as exc:
            record.close("invalid")
            raise self._rejected(request, exc) from None

        def cancel() -> None:
            abort()  # frees its blocks now
            record.close("abort")  # no-op once it finished

        return cancel

    async def Health(  # noqa: N802
        self, request: worker_pb2.HealthRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.HealthResponse:
        return worker_pb2.HealthResponse(
            ready=self.ready, instance_id=self.instance_id, model=self.engine.model_name
        )

    async def Stats(  # noqa: N802
        self, request: worker_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.StatsResponse:
        s = self.engine.stats()
        return worker_pb2.StatsResponse(
            instance_id=self.instance_id,
            total_blocks=s.total_blocks,
            active_blocks=s.active_blocks,
            cached_blocks=s.cached_blocks,
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            prefix_cache_hit_rate=s.prefix_cache_hit_rate,
            kv_usage=s.kv_usage,
            num_preemptions=s.num_preemptions,
            prefill_step_seconds_avg=s.prefill_step_seconds_avg,
            decode_step_seconds_avg=s.decode_step_seconds_avg,
        )

    async def KvEventsSince(  # noqa: N802
        self, request: worker_pb2.KvEventsSinceRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.KvEventsSinceResponse:
        events, is_snapshot, last = self.publisher.events_since(request.from_event_id)
        resp = worker_pb2.KvEventsSinceResponse(is_snapshot=is_snapshot, last_event_id=last)
        resp.events.extend(events)
        return resp
