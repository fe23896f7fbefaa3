"""Serve an in-process `Worker` servicer (a test fake) on a real gRPC port."""

from __future__ import annotations

import grpc
from tandem.runtime.grpc_util import start_server
from tandem.runtime.wire import worker_pb2_grpc


async def serve_worker(servicer: worker_pb2_grpc.WorkerServicer) -> tuple[grpc.aio.Server, str]:
    """Start `servicer` on a free loopback port; the server and its `host:port`."""
    server, port = await start_server(
        lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(servicer, s), "127.0.0.1", 0
    )
    return server, f"127.0.0.1:{port}"
