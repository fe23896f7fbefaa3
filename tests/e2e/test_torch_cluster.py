"""The real model end to end: openai client -> frontend -> torch worker (real processes)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from tandem.launcher.local_infra import LocalInfra

from tests.e2e.openai_cluster import MODEL, Cluster
from tests.support.processes import ServiceProcess

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def torch_cluster(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(infra, tmp_path_factory.mktemp("torch-e2e"))
    worker = ServiceProcess(
        "tandem.worker",
        [
            "--engine",
            "torch",
            "--host",
            "127.0.0.1",
            "--num-kv-blocks",
            "512",
            *cluster.common_flags(),
        ],
        cluster.log_dir,
    )
    try:
        worker.wait_log("worker ready", timeout=180)
        cluster.start_frontend(wait_workers=0)
        cluster.wait_workers(1)
        yield cluster
    finally:
        cluster.stop()
        worker.stop()


@pytest.fixture
def client(torch_cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{torch_cluster.url}/v1", api_key="none", max_retries=0)


@pytest.mark.slow
def test_capital_of_france_is_paris(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=32, temperature=0
    )
    text = reply.choices[0].message.content or ""
    assert "Paris" in text, text
    assert reply.usage is not None and reply.usage.prompt_tokens > 10


@pytest.mark.slow
def test_streaming_gives_the_same_greedy_text_and_reuses_the_cached_prefix(
    client: openai.OpenAI,
) -> None:
    whole = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=24, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].message.content
    # The same prompt again: every full block but the last is served from the prefix cache.
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens >= (usage.prompt_tokens // 16 - 1) * 16 > 0


@pytest.mark.slow
def test_completions_with_token_ids_and_logprobs(
    client: openai.OpenAI, torch_cluster: Cluster
) -> None:
    reply = client.completions.create(
        model=MODEL, prompt=[504, 3575, 282, 4649, 314], max_tokens=4, temperature=0, logprobs=2
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and len(choice.logprobs.token_logprobs or []) == 4
    assert all(lp is not None and lp <= 0 for lp in choice.logprobs.token_logprobs or [])
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs or [])
