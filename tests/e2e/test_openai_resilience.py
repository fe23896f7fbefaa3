"""Workers that die, leave or join while the frontend serves; the no-worker case."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from tandem.launcher.local_infra import LocalInfra

from tests.e2e.openai_cluster import MODEL, Cluster
from tests.support.processes import ServiceProcess

CHAT = [{"role": "user", "content": "Count to a thousand."}]


@pytest.fixture
def cluster(infra: LocalInfra, log_dir: Path) -> Iterator[Cluster]:
    c = Cluster(infra, log_dir)
    yield c
    c.stop()


def _client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_no_worker_is_503(cluster: Cluster) -> None:
    cluster.start_frontend(*cluster.static_model_flags(), "--router-mode", "random", wait_workers=0)
    client = _client(cluster)
    assert [m.id for m in client.models.list()] == [MODEL]
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4)
    assert info.value.status_code == 503
    with pytest.raises(openai.InternalServerError) as info:
        client.completions.create(model=MODEL, prompt="hi", max_tokens=4, stream=True)
    assert info.value.status_code == 503

    # A worker that registers later is used without a restart.
    cluster.start_workers(1)
    cluster.wait_workers(1)
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4)
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_worker_killed_mid_stream_migrates(cluster: Cluster) -> None:
    # Real-time decode (~6 ms a token) so the stream is still running when its worker dies.
    workers = cluster.start_workers(2, speedup=1.0)
    cluster.start_frontend("--router-mode", "round-robin", wait_workers=2)
    client = _client(cluster)
    max_tokens = 300
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = []
    victim = None
    for chunk in stream:
        chunks.append(chunk)
        if victim is None and len(chunks) == 20:
            [victim] = [w for w in workers if w.num_running() > 0]
            victim.proc.kill()
    assert victim is not None
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == max_tokens
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["length"]
    assert cluster.frontend is not None and "migrating" in cluster.frontend.log_text()

    # New requests succeed at once: one routed to the dead worker (still in etcd until its
    # lease expires) fails to connect and moves to the survivor before its first token.
    for _ in range(3):
        reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
        assert reply.usage is not None and reply.usage.completion_tokens == 3

    # All workers gone: the model stays known, requests get 503; a new worker brings it back.
    survivor = next(w for w in workers if w is not victim)
    survivor.proc.stop()
    cluster.wait_workers(0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
    assert info.value.status_code == 503
    cluster.start_workers(1)
    cluster.wait_workers(1)
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_client_disconnect_cancels_the_worker_stream(cluster: Cluster) -> None:
    [worker] = cluster.start_workers(1, speedup=1.0)
    cluster.start_frontend("--router-mode", "random", wait_workers=1)
    body = {"model": MODEL, "prompt": "go", "max_tokens": 5000, "stream": True, "ignore_eos": True}
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    try:
        conn.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 200
        events = 0
        while events < 10:
            events += resp.readline().startswith(b"data: ")
        assert worker.num_running() == 1
    finally:
        conn.close()
    # Connection closed: the frontend cancels the gRPC stream; the worker frees the request.
    worker.proc.wait_until(
        lambda: worker.num_running() == 0, 10, "the worker to drop the cancelled request"
    )


def test_frontend_with_standalone_router(cluster: Cluster) -> None:
    cluster.start_workers(2)
    router = ServiceProcess(
        "tandem.router",
        ["--host", "127.0.0.1", "--port", "0", "--router-mode", "kv", *cluster.common_flags()],
        cluster.log_dir,
    )
    try:
        router.wait_log("router ready", timeout=60)
        match = re.search(r"router ready instance_id=\S+ endpoint=(\S+)", router.log_text())
        assert match, router.log_text()
        cluster.start_frontend("--router-url", match.group(1), wait_workers=2)
        client = _client(cluster)
        for _ in range(3):
            reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5)
            assert reply.usage is not None and reply.usage.completion_tokens == 5
    finally:
        router.stop()
