"""gRPC helpers: servers on free ports, a clear error for a taken port, working channels."""

from __future__ import annotations

import pytest
from tandem.runtime.grpc_util import PortInUseError, create_channel, start_server
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc


class _Health(worker_pb2_grpc.WorkerServicer):
    async def Health(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        return worker_pb2.HealthResponse(ready=True, instance_id="w")


async def test_server_on_a_free_port_answers_over_a_shared_channel() -> None:
    server, port = await start_server(
        lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(_Health(), s), "127.0.0.1", 0
    )
    try:
        assert port > 0
        async with create_channel(f"127.0.0.1:{port}") as channel:
            reply = await worker_pb2_grpc.WorkerStub(channel).Health(
                worker_pb2.HealthRequest(), timeout=5
            )
        assert reply.ready and reply.instance_id == "w"
    finally:
        await server.stop(0)


async def test_taken_port_is_a_clear_error() -> None:
    server, port = await start_server(lambda s: None, "127.0.0.1", 0)
    try:
        with pytest.raises(PortInUseError, match=str(port)):
            await start_server(lambda s: None, "127.0.0.1", port)
    finally:
        await server.stop(0)
