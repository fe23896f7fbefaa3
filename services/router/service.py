"""The standalone Router gRPC service: one router per model, shared by several frontends.

Frontends name the model in each RouteRequest; with `--model` set, every
request goes to that model's router. Errors map once here: NoWorkersError ->
UNAVAILABLE, RouterBusyError -> RESOURCE_EXHAUSTED (the frontend answers
both with HTTP 503).
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
from opentelemetry.trace import SpanKind, Tracer
from tandem.runtime.tracing import context_from_metadata
from tandem.runtime.wire import router_pb2, router_pb2_grpc

from .api import BaseRouter, NoWorkersError, RouterBusyError
from .model_routers import ModelRouters


class RouterService(router_pb2_grpc.RouterServicer):
    """Serves Route / PrefillDone / Free; owns which models get a router (`routers` builds them)."""

    def __init__(
        self, routers: ModelRouters, model: str = "", tracer: Tracer | None = None
    ) -> None:
        self.routers = routers
        self._tracer = tracer
        self._fixed_model = model
        self._known_models: set[str] = set()

    def key(self, model: str) -> str:
        """Requests without a model (or any, with --model) share one router."""
        return self._fixed_model or model

    async def start(self) -> None:
        """Build the routers of every model known now, so a restart routes at once.

        The router for requests that name no model is built on first use."""
        if self._fixed_model:
            self._known_models.add(self._fixed_model)
            await self.routers.build(self._fixed_model)
            return
        self._known_models.update(await self.routers.discovery.list_models())
        for model in sorted(self._known_models):
            await self.routers.build(model)

    async def router_for(self, model: str) -> BaseRouter:
        """The router of `model`; NoWorkersError for a model no worker ever registered."""
        key = self.key(model)
        route = self.routers.get(key)
        if route is None:
            if key and key not in self._known_models:
                if await self.routers.discovery.get_model_card(key) is None:
                    raise NoWorkersError(f"no worker has registered model {key!r}")
                self._known_models.add(key)
            route = await self.routers.build(key)
        return route.router

    async def Route(  # noqa: N802 - gRPC method name
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteDecision:
        try:
            with self._span(request, context) as span:
                router = await self.router_for(request.model)
                result = await router.route(
                    request.request_id,
                    list(request.token_ids),
                    exclude=frozenset(request.exclude_instance_ids),
                    max_tokens=request.max_tokens,
                )
                if span is not None:
                    span.set_attribute("tandem.instance_id", result.instance_id)
        except NoWorkersError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except RouterBusyError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return router_pb2.RouteDecision(
            instance_id=result.instance_id,
            endpoint=result.endpoint,
            overlap_blocks=result.overlap_blocks,
            prompt_blocks=result.prompt_blocks,
        )

    def _span(self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext) -> Any:
        """A span for one Route call, parented on the frontend's (the request's one trace)."""
        if self._tracer is None:
            return contextlib.nullcontext()
        return self._tracer.start_as_current_span(
            "Router.Route",
            context=context_from_metadata(context.invocation_metadata()),
            kind=SpanKind.SERVER,
            attributes={"tandem.request_id": request.request_id, "tandem.model": request.model},
        )

    # Free / PrefillDone carry no model: every router is told (cheap, idempotent, and no
    # request -> router map to leak when a frontend dies before freeing).

    async def PrefillDone(  # noqa: N802
        self, request: router_pb2.PrefillDoneRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.PrefillDoneResponse:
        for router in self.routers.routers():
            router.prefill_done(request.request_id)
        return router_pb2.PrefillDoneResponse()

    async def Free(  # noqa: N802
        self, request: router_pb2.FreeRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.FreeResponse:
        for router in self.routers.routers():
            router.free(request.request_id)
        return router_pb2.FreeResponse()
