"""Shared fixtures: a real nats-server (JetStream) and etcd on free loopback ports."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.wire import worker_pb2_grpc

from tests.support.fake_worker import serve_worker

ServeWorker = Callable[[worker_pb2_grpc.WorkerServicer], Awaitable[str]]

# Every frontend a test starts (itself or through `tandem up`) inherits this: the KServe
# gRPC API's default port is a fixed one (8001), and tests run side by side. A test of that
# API gives its frontend a free --grpc-port.
os.environ.setdefault("TANDEM_GRPC_PORT", "0")


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInfra]:
    """One nats + etcd pair for the whole session; tests isolate by namespace."""
    servers = LocalInfra.start(tmp_path_factory.mktemp("infra"))
    yield servers
    servers.stop()


@pytest.fixture
def namespace() -> str:
    """A fresh namespace per test, so tests sharing `infra` never see each other."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
async def servers() -> AsyncIterator[ServeWorker]:
    """Serves a fake worker on a free loopback port, returns its endpoint; all stop after the test."""
    started: list[grpc.aio.Server] = []

    async def serve(worker: worker_pb2_grpc.WorkerServicer) -> str:
        server, endpoint = await serve_worker(worker)
        started.append(server)
        return endpoint

    yield serve
    for server in started:
        await server.stop(None)
