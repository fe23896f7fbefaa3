"""The standalone Router gRPC service: one router shared by several frontends.

Errors map once here: NoWorkersError -> UNAVAILABLE, RouterBusyError ->
RESOURCE_EXHAUSTED (the frontend answers both with HTTP 503).
"""

from __future__ import annotations

import grpc
from tandem.runtime.wire import router_pb2, router_pb2_grpc

from .api import NoWorkersError, RouterBusyError
from .model_routers import ModelRouters


class RouterService(router_pb2_grpc.RouterServicer):
    """Serves Route / PrefillDone / Free from the per-model routers."""

    def __init__(self, routers: ModelRouters) -> None:
        self.routers = routers

    async def Route(  # noqa: N802 - gRPC method name
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteDecision:
        try:
            router = await self.routers.get(request.model)
            result = await router.route(
                request.request_id,
                list(request.token_ids),
                exclude=frozenset(request.exclude_instance_ids),
                max_tokens=request.max_tokens,
            )
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
