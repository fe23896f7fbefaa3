"""The OpenAI API end to end: real nats + etcd, two mocker workers and the frontend as processes,
driven by the official `openai` client (and raw HTTP for malformed input)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from tandem.launcher.local_infra import LocalInfra

from tests.e2e.openai_cluster import MODEL, Cluster, post

CHAT = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def cluster(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(infra, tmp_path_factory.mktemp("openai-logs"))
    try:
        c.start_workers(2)
        c.start_frontend(wait_workers=2)  # the default router: kv
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 12
    assert reply.usage.prompt_tokens > 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CHAT,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.7,
        top_p=0.9,
        seed=3,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 20
    assert text and "\ufffd" not in text[:-1]
    # The same seed gives the same text, streamed or not.
    again = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=20, temperature=0.7, top_p=0.9, seed=3
    )
    assert again.choices[0].message.content == text


def test_completions_text_and_token_ids(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    ids = [1, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=7)
    assert by_ids.usage is not None
    assert by_ids.usage.prompt_tokens == len(ids)
    assert by_ids.usage.completion_tokens == 7
    stream = client.completions.create(
        model=MODEL, prompt=ids, max_tokens=7, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


def test_completions_echo(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Echo me", max_tokens=3, echo=True)
    assert reply.choices[0].text.startswith("Echo me") and len(reply.choices[0].text) > 7
    stream = client.completions.create(
        model=MODEL, prompt="Echo me", max_tokens=3, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in stream).startswith("Echo me")


def test_default_completion_length_is_sixteen(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Hi")
    assert reply.usage is not None and reply.usage.completion_tokens == 16


def test_cached_tokens_are_reported(client: openai.OpenAI) -> None:
    long_prompt = [{"role": "user", "content": "cache me " * 64}]
    cached = []
    for _ in range(3):  # kv routing sends repeats where the prefix is cached
        reply = client.chat.completions.create(model=MODEL, messages=long_prompt, max_tokens=2)
        assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
        cached.append(reply.usage.prompt_tokens_details.cached_tokens)
    # The first request shares only the system prompt's block with earlier tests.
    assert cached[0] is not None and cached[0] < 64
    assert max(c or 0 for c in cached[1:]) >= 128


def test_stop_string_cuts_output(client: openai.OpenAI) -> None:
    params = dict(model=MODEL, prompt="Write something", max_tokens=30, temperature=1.0, seed=11)
    full = client.completions.create(**params).choices[0].text  # type: ignore[call-overload]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop
    cut = client.completions.create(**params, stop=[stop])  # type: ignore[call-overload]
    assert cut.choices[0].text == full[: full.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**params, stop=stop, stream=True)  # type: ignore[call-overload]
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == full[: full.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_pass_through(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=4, logprobs=True, top_logprobs=2
    )
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 4
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in content)
    completion = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, logprobs=1)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and len(logprobs.token_logprobs or []) == 3


def test_ignore_eos_and_max_completion_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_completion_tokens=6, extra_body={"ignore_eos": True}
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 6


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert info.value.code == "model_not_found"
    assert MODEL in info.value.message  # names what is served instead


def test_client_errors_through_the_openai_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[])
    assert info.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, temperature=3.5)
    assert info.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as info:
        # Past the mocker's default context length of 131,072 tokens.
        client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=200_000)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, extra_body={"max_tokens": "ten"})
    assert info.value.param == "max_tokens"


def test_requests_the_worker_refuses_are_400s_streamed_or_not(client: openai.OpenAI) -> None:
    # What needs the model (vocabulary, context length) the worker judges; a stream
    # gets the same 400 as a plain request, before any event.
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=[1, 10_000_000], max_tokens=3, stream=True)
    assert info.value.param == "prompt"
    too_long = [{"role": "user", "content": "sea " * 140_000}]  # the mocker takes 131,072
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=too_long, stream=stream)
        assert info.value.code == "context_length_exceeded"
        assert info.value.param == "messages"  # no max_tokens given: the prompt is too long
        assert "maximum context length" in info.value.message


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("chat/completions", b"{not json", 400, None),
        ("chat/completions", b"[1, 2]", 400, None),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 422, "model"),
        ("chat/completions", {"model": MODEL, "messages": "hi"}, 422, "messages"),
        (
            "chat/completions",
            {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages[0].role",
        ),
        (
            "chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
            422,
            "messages[0].content",
        ),
        (
            "chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2},
            400,
            "n",
        ),
        (
            "chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_p": 1.5},
            400,
            "top_p",
        ),
        (
            "chat/completions",
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function"}],
            },
            400,
            "tools",
        ),
        (
            "chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "bogus": 1},
            400,
            "bogus",
        ),
        ("completions", {"model": MODEL, "prompt": [1, -2]}, 400, "prompt"),
        ("completions", {"model": MODEL, "prompt": [1, 10_000_000]}, 400, "prompt"),
        ("completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("completions", {"model": MODEL, "prompt": "x", "seed": "1"}, 422, "seed"),
        ("completions", {"model": "nope", "prompt": "x"}, 404, "model"),
    ],
)
def test_bad_input_gets_an_openai_error_object(
    cluster: Cluster, path: str, body: bytes | dict[str, object], status: int, param: str | None
) -> None:
    got_status, payload = post(f"{cluster.url}/v1/{path}", body)
    assert got_status == status, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_unknown_path_and_metrics(cluster: Cluster, client: openai.OpenAI) -> None:
    status, payload = post(f"{cluster.url}/v1/embeddings", {"model": MODEL})
    assert status == 404 and payload["error"]["code"] == "not_found"
    import urllib.request

    with urllib.request.urlopen(f"{cluster.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for name in (
        "tandem_frontend_requests_total",
        "tandem_frontend_time_to_first_token_seconds",
        "tandem_frontend_inter_token_latency_seconds",
    ):
        assert name in text
