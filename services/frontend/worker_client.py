"""gRPC channels to workers, one per endpoint, cached and closed when the worker goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TypeAlias

import grpc
from tandem.runtime.grpc_util import create_channel
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)


GenerateCall: TypeAlias = grpc.aio.UnaryStreamCall


class WorkerClientPool:
    """Owns one gRPC channel (and stub) per worker endpoint."""

    def __init__(self) -> None:
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, endpoint: str) -> worker_pb2_grpc.WorkerStub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            channel = create_channel(endpoint)
            self._channels[endpoint] = channel
            stub = self._stubs[endpoint] = worker_pb2_grpc.WorkerStub(channel)
        return stub

    def generate(
        self,
        endpoint: str,
        request: worker_pb2.GenerateRequest,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> GenerateCall:
        """Open the Generate stream (wait_for_ready=False: a dead endpoint fails at once)."""
        return self.stub(endpoint).Generate(request, metadata=metadata or None)

    async def drop(self, endpoint: str) -> None:
        """Close the channel to a worker that left (its in-flight calls fail and migrate)."""
        self._stubs.pop(endpoint, None)
        channel = self._channels.pop(endpoint, None)
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    async def close(self) -> None:
        await asyncio.gather(*(self.drop(e) for e in list(self._channels)), return_exceptions=True)
