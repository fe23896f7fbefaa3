"""The OpenAI HTTP API on aiohttp: routes, SSE streaming, and the one error -> status mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.trace import SpanKind, Tracer
from tandem.runtime.metrics import metrics_handler
from tandem.runtime.startup import binding
from tandem.runtime.tracing import context_from_metadata, context_to_metadata

from .config import FrontendConfig
from .endpoints import ENDPOINTS, BaseEndpoint, RequestT
from .errors import (
    FrontendError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTooLargeError,
)
from .generation import Generator
from .job import GenerationJob, TokenLogprob
from .metrics import FrontendMetrics
from .models import ModelRegistry, ServedModel
from .openapi import openapi_json
from .request_outcome import RequestOutcome
from .responses import DONE, BaseRenderer, error_event

log = logging.getLogger(__name__)

_SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
# W3C trace context: forwarded to the worker so one request is one trace.
_TRACE_HEADERS = ("traceparent", "tracestate")


class _SseResponse(web.StreamResponse):
    """A streaming response whose headers leave with the first event, in one send.

    `web.StreamResponse` writes its headers in `prepare()`; we always write the
    first event right after, so deferring them (as `web.Response` does) saves
    a syscall and a TCP segment per request. The first `write()` flushes the
    headers even when its data is empty.
    """

    _send_headers_immediately = False


def error_response(exc: FrontendError) -> web.Response:
    return web.json_response(exc.to_dict(), status=exc.status, headers=exc.headers())


@web.middleware
async def _errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure leaves as an OpenAI error object; nothing a client sends yields a 500."""
    try:
        return await handler(request)
    except FrontendError as exc:
        return error_response(exc)
    except web.HTTPNotFound:
        return error_response(NotFoundError(f"No route for {request.method} {request.path}."))
    except web.HTTPMethodNotAllowed:
        return error_response(
            MethodNotAllowedError(f"Method {request.method} not allowed on {request.path}.")
        )
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            RequestTooLargeError(f"Request body exceeds {request.client_max_size} bytes.")
        )
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(FrontendError("Internal server error."))


class OpenAIServer:
    """Owns the aiohttp application serving the OpenAI API, /health and /metrics."""

    def __init__(
        self,
        models: ModelRegistry,
        generator: Generator,
        metrics: FrontendMetrics,
        tracer: Tracer | None = None,
        *,
        middlewares: Sequence[Middleware] = (),
        max_body_bytes: int = FrontendConfig.max_body_bytes,
    ) -> None:
        self._tracer = tracer
        self._models = models
        self._generator = generator
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port = 0
        # `middlewares` (the API-key and load door) run inside the error middleware.
        app = web.Application(
            middlewares=[_errors_middleware, *middlewares], client_max_size=max_body_bytes
        )
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", metrics_handler(metrics.registry))
        # Generated once from the declared request types the endpoints decode with.
        self._openapi = openapi_json(ENDPOINTS)
        app.router.add_get("/openapi.json", self._openapi_document)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/models/{model:.+}", self._get_model)
        for endpoint in ENDPOINTS:
            self._add_endpoint(app, endpoint)
        self.app = app

    async def start(self, host: str, port: int) -> None:
        # handler_cancellation: a client that disconnects cancels its handler and worker stream.
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=2048, reuse_address=True)
        with binding("the HTTP server", host, port):
            await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- simple endpoints ------------------------------------------------------------

    async def _openapi_document(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    async def _health(self, _request: web.Request) -> web.Response:
        models = {m.name: len(m.workers) for m in self._models.known()}
        return web.json_response({"status": "healthy", "models": models})

    @staticmethod
    def _model_object(model: ServedModel) -> dict[str, Any]:
        return {
            "id": model.name,
            "object": "model",
            "created": model.created,
            "owned_by": "tandem",
            "max_model_len": model.context_length,
        }

    async def _list_models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [self._model_object(m) for m in self._models.served()]}
        )

    async def _get_model(self, request: web.Request) -> web.Response:
        model = await self._models.lookup(request.match_info["model"])
        return web.json_response(self._model_object(model))

    # -- generation ----------------------------------------------------------------------

    def _add_endpoint(self, app: web.Application, endpoint: BaseEndpoint[Any]) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, endpoint)

        app.router.add_post(endpoint.path, handle)

    async def _handle(
        self, request: web.Request, endpoint: BaseEndpoint[Any]
    ) -> web.StreamResponse:
        if self._tracer is None:
            return await self._serve(request, endpoint)
        # One request is one trace: parented on the client's traceparent, if any.
        parent = context_from_metadata(request.headers)
        with self._tracer.start_as_current_span(
            f"POST /v1/{endpoint.name}", context=parent, kind=SpanKind.SERVER
        ):
            return await self._serve(request, endpoint)

    async def _serve(
        self, request: web.Request, endpoint: BaseEndpoint[RequestT]
    ) -> web.StreamResponse:
        with RequestOutcome(self._metrics, self._generator, endpoint.name) as outcome:
            parsed = endpoint.parse(await request.read())
            model = await self._models.lookup(parsed.model)
            outcome.model = model.name
            request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
            job = endpoint.job(request_id, model, await endpoint.prompt_ids(model, parsed), parsed)
            self._trace(request, job)
            renderer = endpoint.renderer(job, parsed)
            with outcome.generating(job):
                if parsed.stream:
                    include_usage = parsed.stream_options.include_usage
                    return await self._stream(request, job, renderer, include_usage)
                return await self._unary(job, renderer)

    def _trace(self, request: web.Request, job: GenerationJob) -> None:
        """Pass the request's trace context on to the worker."""
        headers = request.headers
        if self._tracer is not None:
            job.trace_metadata = tuple(context_to_metadata())  # our span's context
        elif "traceparent" in headers:
            job.trace_metadata = tuple(
                (name, headers[name]) for name in _TRACE_HEADERS if name in headers
            )

    async def _unary(self, job: GenerationJob, renderer: BaseRenderer) -> web.Response:
        texts: list[str] = []
        logprobs: list[TokenLogprob] = []
        finish_reason = "stop"
        async with contextlib.aclosing(self._generator.stream(job)) as outputs:
            async for out in outputs:
                texts.extend(out.texts)
                if out.logprobs:
                    logprobs.extend(out.logprobs)
                if out.finish_reason is not None:
                    finish_reason = out.finish_reason
        body = renderer.body(
            texts,
            logprobs if job.sampling.logprobs else None,
            finish_reason,
            job.reported_usage(),
        )
        return web.json_response(body)

    async def _stream(
        self,
        request: web.Request,
        job: GenerationJob,
        renderer: BaseRenderer,
        include_usage: bool,
    ) -> web.StreamResponse:
        outputs = self._generator.stream(job)
        # Wait for the first output before committing to 200, so "no worker" is a real 503
        # and a request the worker refuses a real 400.
        async with contextlib.aclosing(outputs):
            first = await anext(outputs, None)
            response = _SseResponse(status=200, headers=_SSE_HEADERS)
            await response.prepare(request)
            _set_nodelay(request)
            render, write = renderer.step, response.write
            try:
                data = renderer.first()
                out = first
                while out is not None:
                    data += render(out)
                    if out.finish_reason is not None:
                        break  # the last tokens, usage, [DONE] and the end of the body: one write
                    await write(data)
                    data = b""
                    out = await anext(outputs, None)
                if include_usage:
                    data += renderer.usage(job.reported_usage())
                await response.write_eof(data + DONE)
            except FrontendError as exc:
                # Headers are sent: the error travels as an event, as OpenAI does mid-stream.
                log.warning("stream failed: %s", exc.message, extra={"request_id": job.request_id})
                await response.write_eof(error_event(exc.to_dict()) + DONE)
            except ConnectionResetError:
                # The client went away between writes; closing `outputs` cancels the worker stream.
                self._metrics.model(job.model.name).disconnects.inc()
        return response


def _set_nodelay(request: web.Request) -> None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
