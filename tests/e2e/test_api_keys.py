"""A locked frontend process: API keys (401/200) and the concurrency limit (503 + Retry-After),
through the official `openai` client against a mocker worker."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from tandem.launcher.local_infra import LocalInfra

from tests.e2e.openai_cluster import MODEL, Cluster

KEYS = ("sk-e2e-first-7f3a", "sk-e2e-second-91cd")
CHAT = [{"role": "user", "content": "Tell me about the sea."}]
LIMIT = 2


@pytest.fixture(scope="module")
def cluster(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("api-keys")
    key_file = root / "keys"
    key_file.write_text(f"# keys of this test\n{KEYS[0]}\n\n{KEYS[1]}\n")
    os.chmod(key_file, 0o600)
    logs = root / "logs"
    logs.mkdir()
    c = Cluster(infra, logs)
    try:
        # Real-time decode (~6 ms a token): a long stream stays open while the test looks.
        c.start_workers(1, speedup=1.0)
        c.start_frontend("--api-key-file", str(key_file), "--max-concurrent-requests", str(LIMIT))
        yield c
    finally:
        c.stop()


def _client(cluster: Cluster, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=key, max_retries=0, timeout=30)


def test_without_the_key_401_with_it_200(cluster: Cluster) -> None:
    for wrong in ("sk-wrong", KEYS[0] + "x"):
        client = _client(cluster, wrong)
        with pytest.raises(openai.AuthenticationError) as info:
            client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
        assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
        assert info.value.response.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    for key in KEYS:
        client = _client(cluster, key)
        assert [m.id for m in client.models.list()] == [MODEL]
        chat = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
        assert chat.usage is not None and chat.usage.completion_tokens == 2
        completion = client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert completion.usage is not None and completion.usage.completion_tokens == 2

    # Probes and scrapers need no key.
    for path in ("/health", "/metrics"):
        with urllib.request.urlopen(f"{cluster.url}{path}", timeout=5) as resp:
            assert resp.status == 200
    assert cluster.frontend is not None
    log = cluster.frontend.log_text()
    assert "API keys required on /v1 (2 accepted)" in log
    assert not any(key in log for key in KEYS)


def test_beyond_the_limit_503_with_retry_after(cluster: Cluster) -> None:
    client = _client(cluster, KEYS[0])
    streams = [
        client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=5000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for _ in range(LIMIT)
    ]
    try:
        for stream in streams:
            next(iter(stream))  # each stream is served: LIMIT requests in flight
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
        assert info.value.status_code == 503 and info.value.code == "service_unavailable"
        assert info.value.response.headers["retry-after"] == "1"
        with urllib.request.urlopen(f"{cluster.url}/health", timeout=5) as resp:
            assert resp.status == 200
    finally:
        for stream in streams:
            stream.close()

    # A stream's place is free once the frontend sees its client gone.
    def served() -> bool:
        try:
            client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2)
        except openai.InternalServerError:
            return False
        return True

    assert cluster.frontend is not None
    cluster.frontend.wait_until(served, 30, "a request under the limit again")
