"""RemoteRouter: the BaseRouter API over gRPC, for frontends that share a standalone router."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

import grpc
from tandem.runtime.grpc_util import create_channel
from tandem.runtime.tracing import context_to_metadata
from tandem.runtime.wire import router_pb2, router_pb2_grpc

from .api import BaseRouter, NoWorkersError, RouterBusyError, RouteResult

log = logging.getLogger(__name__)
ROUTE_TIMEOUT_SECONDS = 60.0  # the router may queue a request while every worker is busy
NOTIFY_TIMEOUT_SECONDS = 5.0


class RemoteRouter(BaseRouter):
    """Owns one gRPC channel to a `tandem router` and the fire-and-forget Free/PrefillDone calls."""

    def __init__(self, endpoint: str, model: str = "") -> None:
        self.endpoint = endpoint
        self.model = model
        self._channel: grpc.aio.Channel | None = None
        self._stub: router_pb2_grpc.RouterStub | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._channel is None:
            self._channel = create_channel(self.endpoint)
            self._stub = router_pb2_grpc.RouterStub(self._channel)

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    @property
    def stub(self) -> router_pb2_grpc.RouterStub:
        if self._stub is None:
            raise RuntimeError("RemoteRouter.start() was not called")
        return self._stub

    async def route(
        self,
        request_id: str,
        token_ids: list[int],
        *,
        exclude: Collection[str] = (),
        max_tokens: int = 0,
    ) -> RouteResult:
        request = router_pb2.RouteRequest(
            request_id=request_id,
            model=self.model,
            token_ids=token_ids,
            exclude_instance_ids=list(exclude),
            max_tokens=max_tokens,
        )
        try:
            # The request's trace context: the router's span joins the request's trace.
            decision = await self.stub.Route(
                request, timeout=ROUTE_TIMEOUT_SECONDS, metadata=tuple(context_to_metadata())
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise RouterBusyError(exc.details() or "router busy") from None
            raise NoWorkersError(
                f"router at {self.endpoint}: {exc.code().name} {exc.details()}"
            ) from None
        return RouteResult(
            decision.instance_id, decision.endpoint, decision.overlap_blocks, decision.prompt_blocks
        )

    def prefill_done(self, request_id: str) -> None:
        self._notify(
            self.stub.PrefillDone(
                router_pb2.PrefillDoneRequest(request_id=request_id), timeout=NOTIFY_TIMEOUT_SECONDS
            )
        )

    def free(self, request_id: str) -> None:
        self._notify(
            self.stub.Free(
                router_pb2.FreeRequest(request_id=request_id), timeout=NOTIFY_TIMEOUT_SECONDS
            )
        )

    def _notify(self, call: object) -> None:
        async def run() -> None:
            try:
                await call  # type: ignore[misc]
            except grpc.aio.AioRpcError as exc:
                log.warning("router notification failed: %s", exc.code().name)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
