"""Fixtures for frontend tests: the bundled tokenizer, and a frontend over one fake worker.

(Fake workers themselves: `servers` in tests/conftest.py.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tandem.frontend.generation import Generator
from tandem.frontend.http_server import OpenAIServer
from tandem.frontend.metrics import FrontendMetrics
from tandem.frontend.worker_client import WorkerClientPool
from tandem.runtime.model_card import default_model_path
from tandem.runtime.tokenizer import Tokenizer

from tests.support.frontend_fakes import FakeWorker, ListRouter, OneModel, model_for


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(default_model_path())


@pytest.fixture
async def frontend_url(tokenizer: Tokenizer, servers: Any) -> AsyncIterator[str]:
    """The base URL of an in-process frontend serving model "m" from one fake worker."""
    endpoint = await servers(FakeWorker([100, 101, 102]))
    model = model_for(tokenizer, ListRouter({"w": endpoint}))
    metrics = FrontendMetrics()
    generator = Generator(WorkerClientPool(), metrics)
    server = OpenAIServer(OneModel(model), generator, metrics)  # type: ignore[arg-type]
    await server.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.port}"
    await server.stop()
