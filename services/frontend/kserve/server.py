"""The frontend's KServe v2 gRPC server (`--grpc-port`), next to its HTTP server."""

from __future__ import annotations

import grpc
from tandem.runtime.grpc_util import SERVER_OPTIONS, start_server
from tandem.runtime.wire.kserve import grpc_service_pb2_grpc as pb_grpc

from .service import InferenceService

# Seconds in-flight calls get to finish when the frontend stops.
_STOP_GRACE_SECONDS = 5.0
_MAX_RECEIVE = "grpc.max_receive_message_length"


class KserveServer:
    """Owns the gRPC server that serves `InferenceService`."""

    def __init__(self, service: InferenceService, max_request_bytes: int) -> None:
        self._service = service
        # A request larger than --max-body-bytes is refused by gRPC (RESOURCE_EXHAUSTED),
        # as the HTTP API refuses a larger body.
        self._options = [(k, v) for k, v in SERVER_OPTIONS if k != _MAX_RECEIVE]
        self._options.append((_MAX_RECEIVE, max_request_bytes))
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        def add(server: grpc.aio.Server) -> None:
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(self._service, server)

        self._server, self.port = await start_server(add, host, port, options=self._options)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(_STOP_GRACE_SECONDS)
