"""Fixtures for frontend tests: the bundled tokenizer, fake workers on real gRPC ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from tandem.runtime.model_card import default_model_path
from tandem.runtime.tokenizer import Tokenizer

from tests.support.fake_worker import serve_worker
from tests.support.frontend_fakes import FakeWorker

ServeWorker = Callable[[FakeWorker], Awaitable[str]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(default_model_path())


@pytest.fixture
async def servers() -> AsyncIterator[ServeWorker]:
    """Serves a fake worker, returns its endpoint; every server stops after the test."""
    started: list[grpc.aio.Server] = []

    async def serve(worker: FakeWorker) -> str:
        server, endpoint = await serve_worker(worker)
        started.append(server)
        return endpoint

    yield serve
    for server in started:
        await server.stop(None)
