"""The HTTP API over fake workers: a request the worker refuses is a 400, usage is the worker's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from tandem.frontend.generation import Generator
from tandem.frontend.http_server import OpenAIServer
from tandem.frontend.metrics import FrontendMetrics
from tandem.frontend.worker_client import WorkerClientPool
from tandem.runtime.tokenizer import Tokenizer
from tandem.runtime.wire import worker_pb2

from tests.support.frontend_fakes import FakeWorker, ListRouter, OneModel, model_for

CONTEXT_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, you requested 9001 tokens "
    "(1 in the messages, 9000 in the completion). Please reduce the length of the messages or "
    "completion."
)


class Api:
    """A frontend over one fake worker, and an HTTP client for it."""

    def __init__(self, server: OpenAIServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.server.port}/v1/{path}"
        async with self.session.post(url, json=body) as resp:
            raw = await resp.read()
            if resp.content_type == "text/event-stream":
                lines = raw.decode().split("\n\n")
                events = [line[len("data: ") :] for line in lines if line]
                return resp.status, [e if e == "[DONE]" else json.loads(e) for e in events]
            return resp.status, json.loads(raw)


@pytest.fixture
async def api_for(tokenizer: Tokenizer, servers: Any) -> AsyncIterator[Any]:
    started: list[OpenAIServer] = []
    session = aiohttp.ClientSession()

    async def start(worker: FakeWorker) -> Api:
        model = model_for(tokenizer, ListRouter({"w": await servers(worker)}))
        metrics = FrontendMetrics()
        generator = Generator(WorkerClientPool(), metrics)
        server = OpenAIServer(OneModel(model), generator, metrics)  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        started.append(server)
        return Api(server, session)

    yield start
    await session.close()
    for server in started:
        await server.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_the_worker_refuses_is_a_400(api_for: Any, stream: bool) -> None:
    reason = "Token id 10000000 is out of vocabulary (size 49152)."
    api = await api_for(FakeWorker([], reject=(grpc.StatusCode.INVALID_ARGUMENT, reason)))
    body = {"model": "m", "prompt": [1, 10_000_000], "max_tokens": 4, "stream": stream}
    status, payload = await api.post("completions", body)
    assert status == 400
    assert payload["error"] == {
        "message": reason,
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "invalid_value",
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_over_the_context_is_context_length_exceeded(
    api_for: Any, stream: bool
) -> None:
    api = await api_for(FakeWorker([], reject=(grpc.StatusCode.OUT_OF_RANGE, CONTEXT_MESSAGE)))
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    status, payload = await api.post("chat/completions", {**chat, "max_tokens": 9000})
    assert status == 400
    assert payload["error"]["code"] == "context_length_exceeded"
    assert payload["error"]["message"] == CONTEXT_MESSAGE
    assert payload["error"]["param"] == "max_tokens"
    status, payload = await api.post("chat/completions", chat)
    assert (status, payload["error"]["param"]) == (400, "messages")
    status, payload = await api.post("completions", {"model": "m", "prompt": "hi"})
    # The API's default of 16 tokens is a max_tokens too, as the error has always said.
    assert (status, payload["error"]["param"]) == (400, "max_tokens")


async def test_usage_is_the_workers(api_for: Any) -> None:
    usage = worker_pb2.Usage(prompt_tokens=40, completion_tokens=9, cached_tokens=32)
    api = await api_for(FakeWorker([100, 101], usage=usage))
    expected = {
        "prompt_tokens": 40,
        "completion_tokens": 9,
        "total_tokens": 49,
        "prompt_tokens_details": {"cached_tokens": 32},
    }
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    status, payload = await api.post("chat/completions", chat)
    assert status == 200 and payload["usage"] == expected
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    status, events = await api.post("chat/completions", {**chat, **stream})
    assert status == 200 and events[-1] == "[DONE]"
    assert events[-2]["usage"] == expected
