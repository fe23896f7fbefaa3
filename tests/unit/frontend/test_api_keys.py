"""The door: API keys (401), the concurrency limit (503 + Retry-After), the body limit (413)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tandem.frontend.access import access_middleware
from tandem.frontend.api_keys import ApiKeys
from tandem.frontend.config import FrontendConfig
from tandem.frontend.generation import Generator
from tandem.frontend.http_server import OpenAIServer
from tandem.frontend.metrics import FrontendMetrics
from tandem.frontend.request_limits import ConcurrencyLimit
from tandem.frontend.worker_client import WorkerClientPool
from tandem.runtime.startup import StartupError
from tandem.runtime.tokenizer import Tokenizer

from tests.support.checks import wait_until
from tests.support.frontend_fakes import FakeWorker, ListRouter, OneModel, model_for

KEY = "sk-test-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
COMPLETION = {"model": "m", "prompt": "hi", "max_tokens": 3}


def test_only_a_bearer_of_one_of_the_keys_is_accepted() -> None:
    keys = ApiKeys(["sk-a", "sk-b"])
    assert keys.accepts("Bearer sk-a") and keys.accepts("bearer  sk-b ")
    for header in (None, "", "Bearer", "Bearer sk-c", "Bearer sk-a2", "Basic sk-a", "sk-a"):
        assert not keys.accepts(header), header
    assert len(keys) == 2 and len(ApiKeys()) == 0


def test_a_key_file_holds_one_key_a_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# the ops team\nsk-file-1\n\n   sk-file-2  \n")
    keys = ApiKeys.load(["sk-flag"], str(path))
    assert len(keys) == 3
    assert all(keys.accepts(f"Bearer {k}") for k in ("sk-flag", "sk-file-1", "sk-file-2"))
    assert not keys.accepts("Bearer # the ops team")

    path.write_text("# nothing but comments\n\n")
    with pytest.raises(StartupError, match="holds no key"):
        ApiKeys.load([], str(path))
    path.write_text("sk-secret half\n")
    with pytest.raises(StartupError, match="line 1") as error:
        ApiKeys.load([], str(path))
    assert "sk-secret" not in str(error.value)
    with pytest.raises(StartupError, match="cannot read"):
        ApiKeys.load([], str(tmp_path / "missing"))


def test_a_key_with_whitespace_is_refused_without_showing_it() -> None:
    with pytest.raises(ValueError) as error:
        FrontendConfig(api_key=["sk-secret half"])
    assert "sk-secret" not in str(error.value)
    assert KEY not in repr(FrontendConfig(api_key=[KEY]))


class _Door:
    """A frontend behind the door over one fake worker, and a client for it."""

    def __init__(self, server: OpenAIServer, metrics: FrontendMetrics) -> None:
        self.server = server
        self.metrics = metrics
        self.session = aiohttp.ClientSession()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    async def call(
        self, method: str, path: str, key: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, Mapping[str, str]]:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        async with self.session.request(method, self.url(path), headers=headers, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body, r.headers

    def rejected(self, reason: str) -> float:
        name = "tandem_frontend_rejected_requests_total"
        return self.metrics.registry.get_sample_value(name, {"reason": reason}) or 0.0


StartDoor = Callable[..., Awaitable[_Door]]


@pytest.fixture
async def door_for(tokenizer: Tokenizer, servers: Any) -> AsyncIterator[StartDoor]:
    started: list[_Door] = []

    async def start(
        worker: FakeWorker, keys: tuple[str, ...] = (), limit: int = 100, max_body: int = 4096
    ) -> _Door:
        model = model_for(tokenizer, ListRouter({"w": await servers(worker)}))
        metrics = FrontendMetrics()
        server = OpenAIServer(
            OneModel(model),  # type: ignore[arg-type]
            Generator(WorkerClientPool(), metrics),
            metrics,
            middlewares=(access_middleware(ApiKeys(keys), ConcurrencyLimit(limit), metrics),),
            max_body_bytes=max_body,
        )
        await server.start("127.0.0.1", 0)
        door = _Door(server, metrics)
        started.append(door)
        return door

    yield start
    for door in started:
        await door.session.close()
        await door.server.stop()


API_CALLS = [
    ("POST", "/v1/chat/completions", {"json": CHAT}),
    ("POST", "/v1/completions", {"json": COMPLETION}),
    ("POST", "/v1/completions", {"json": {**COMPLETION, "stream": True}}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/models/m", {}),
]


async def test_every_api_route_needs_a_key_and_health_and_metrics_do_not(
    door_for: StartDoor,
) -> None:
    worker = FakeWorker([5, 6, 7])
    door = await door_for(worker, keys=(KEY, "sk-other"))
    for method, path, kwargs in API_CALLS:
        for key in (None, "sk-wrong", KEY[:-1]):
            status, body, headers = await door.call(method, path, key, **kwargs)
            assert (status, headers.get("WWW-Authenticate")) == (401, "Bearer"), (path, key)
            assert body["error"]["type"] == "invalid_request_error"
            assert (body["error"]["code"], body["error"]["param"]) == ("invalid_api_key", None)
            assert KEY not in str(body)
        status, _, _ = await door.call(method, path, KEY, **kwargs)
        assert status == 200, path
    assert len(worker.received) == 3  # refused requests never reached the worker
    assert door.rejected("unauthorized") == 3 * len(API_CALLS)
    for open_path in ("/health", "/metrics"):
        status, _, _ = await door.call("GET", open_path)
        assert status == 200, open_path


async def test_without_keys_the_api_is_open(door_for: StartDoor) -> None:
    door = await door_for(FakeWorker([5, 6, 7]))
    status, body, _ = await door.call("POST", "/v1/chat/completions", json=CHAT)
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"


async def test_requests_beyond_the_limit_get_503_with_retry_after(door_for: StartDoor) -> None:
    gate = asyncio.Event()
    worker = FakeWorker([5, 6, 7], gate=gate, gate_after=1)
    door = await door_for(worker, limit=2)
    streams = [
        asyncio.create_task(
            door.call("POST", "/v1/completions", json={**COMPLETION, "stream": True})
        )
        for _ in range(2)
    ]
    # Both streams are in flight once the worker holds them (each has sent its first token).
    await wait_until(lambda: len(worker.received) == 2, 10, "two streams at the worker")

    status, body, headers = await door.call("POST", "/v1/chat/completions", json=CHAT)
    assert (status, headers.get("Retry-After")) == (503, "1")
    assert (
        body["error"]["code"] == "service_unavailable" and "limit of 2" in body["error"]["message"]
    )
    status, _, _ = await door.call("GET", "/health")
    assert status == 200  # probes are never counted nor refused
    assert len(worker.received) == 2 and door.rejected("overloaded") == 1

    gate.set()
    assert [status for status, _, _ in await asyncio.gather(*streams)] == [200, 200]
    # Their places are free again.
    statuses = await asyncio.gather(
        *(door.call("POST", "/v1/chat/completions", json=CHAT) for _ in range(2))
    )
    assert [status for status, _, _ in statuses] == [200, 200]


async def test_a_body_over_the_limit_is_413(door_for: StartDoor) -> None:
    door = await door_for(FakeWorker([5]), max_body=1024)
    big = {**COMPLETION, "prompt": "x" * 2000}
    status, body, _ = await door.call("POST", "/v1/completions", json=big)
    assert status == 413
    assert body["error"]["code"] == "request_too_large" and "1024 bytes" in body["error"]["message"]
    status, _, _ = await door.call("POST", "/v1/completions", json=COMPLETION)
    assert status == 200
