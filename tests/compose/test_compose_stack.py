"""compose.yaml end to end: the images as built, the stack as an operator starts it.

One stack for the module, used in order: it serves a chat completion, keeps
serving while a worker restarts, and `compose down` leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
from collections.abc import Iterator

import openai
import pytest

from tests.compose.stack import ComposeStack, docker_ids, get_json
from tests.support.checks import wait_until

MODEL = "SmolLM2-135M-Instruct"
# Building is make's job; starting two torch workers on a shared 2-core machine takes minutes.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def before() -> dict[str, set[str]]:
    return {kind: docker_ids(kind) for kind in ("container", "network", "volume")}


@pytest.fixture(scope="module")
def stack(before: dict[str, set[str]]) -> Iterator[ComposeStack]:
    stack = ComposeStack()
    try:
        stack.up()
        yield stack
    finally:
        stack.down()  # again after the last test's own `down`: a no-op there


def workers_of(stack: ComposeStack) -> int:
    """Live workers of the model, as the frontend sees them."""
    try:
        return int(get_json(f"{stack.api}/health")["models"].get(MODEL, 0))
    except (OSError, urllib.error.URLError, ValueError):
        return -1


async def every(seconds: float, check: object) -> bool:
    """`check()`, at most once per `seconds` (a poll of docker, not a wait for time)."""
    await asyncio.sleep(seconds)
    return bool(check())  # type: ignore[operator]


def client(stack: ComposeStack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.api}/v1", api_key="none", max_retries=0)


async def chat(stack: ComposeStack, content: str, max_tokens: int = 16) -> str:
    async with client(stack) as api:
        reply = await api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": content}],
            max_tokens=max_tokens,
            timeout=120,
        )
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    return reply.choices[0].message.content or ""


async def test_the_stack_serves_a_chat_completion(stack: ComposeStack) -> None:
    await wait_until(lambda: workers_of(stack) == 2, 300, "the frontend to see both workers")
    models = get_json(f"{stack.api}/v1/models")
    assert [m["id"] for m in models["data"]] == [MODEL]
    answer = await chat(stack, "What is the capital of France?", max_tokens=24)
    assert "paris" in answer.lower()

    # Prometheus (deploy/prometheus/prometheus.yml) scrapes every Tandem service.
    def scraped() -> bool:
        targets = get_json(f"{stack.prometheus}/api/v1/targets")["data"]["activeTargets"]
        return len(targets) == 4 and all(t["health"] == "up" for t in targets)

    await wait_until(lambda: every(0.5, scraped), 120, "Prometheus to scrape all four targets")


async def test_requests_are_served_while_a_worker_restarts(stack: ComposeStack) -> None:
    served: list[float] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def keep_asking() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                await chat(stack, f"Count to {n}.")
                served.append(time.monotonic())
            except Exception as exc:  # every failure is reported below
                failures.append(exc)

    load = asyncio.create_task(keep_asking())
    try:
        await wait_until(lambda: len(served) >= 2, 120, "requests before the restart")
        restart = asyncio.create_task(asyncio.to_thread(stack.compose, "restart", "worker-0"))
        # SIGTERM: worker-0 finishes its streams, leaves etcd, then starts again.
        await wait_until(lambda: workers_of(stack) == 1, 120, "worker-0 to leave")
        left_at = time.monotonic()
        result = await restart
        assert result.returncode == 0, result.stderr
        await wait_until(lambda: workers_of(stack) == 2, 300, "worker-0 to come back")
        back_at = time.monotonic()
        await wait_until(
            lambda: every(0.5, lambda: stack.health("worker-0") == "healthy"),
            120,
            "worker-0's container to be healthy",
        )
        n_after = len([t for t in served if t > back_at])
        await wait_until(lambda: len(served) > n_after + 2, 120, "requests after the restart")
    finally:
        stop.set()
        await load
    assert not failures, f"{len(failures)} requests failed, first: {failures[0]!r}"
    assert any(left_at < t < back_at for t in served), "nothing was served while worker-0 was away"


def test_compose_down_leaves_nothing_behind(
    stack: ComposeStack, before: dict[str, set[str]]
) -> None:
    assert docker_ids("container", stack.project)  # the stack is there before
    result = stack.down()
    assert result.returncode == 0, result.stderr
    for kind in ("container", "network", "volume"):
        assert not docker_ids(kind, stack.project), f"{kind}s of the project are left"
        assert docker_ids(kind) <= before[kind], (
            f"new {kind}s are left: {docker_ids(kind) - before[kind]}"
        )
