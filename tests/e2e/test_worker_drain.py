"""Scale-down without losing a request: a worker told to stop drains its streams, then leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.discovery import Discovery

from tests.e2e.openai_cluster import MODEL, Cluster
from tests.support.checks import wait_until

MAX_TOKENS = 300


@pytest.fixture
def cluster(infra: LocalInfra, log_dir: Path) -> Iterator[Cluster]:
    c = Cluster(infra, log_dir)
    yield c
    c.stop()


async def test_sigterm_drains_streams_and_loses_none(cluster: Cluster) -> None:
    # Real-time decode (~6 ms a token): 300 tokens run well past the SIGTERM.
    workers = cluster.start_workers(2, 1.0)
    cluster.start_frontend("--router-mode", "round-robin", wait_workers=2)
    client = openai.AsyncOpenAI(
        base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=60
    )
    discovery = Discovery(cluster.infra.etcd_url, cluster.namespace)
    await discovery.start()
    chunks_seen = [0] * 6

    async def stream(i: int) -> tuple[int, str | None]:
        reply = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}000."}],
            max_tokens=MAX_TOKENS, stream=True, stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        finish, tokens = None, 0
        async for chunk in reply:
            chunks_seen[i] += 1
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens, finish

    try:
        view = await discovery.instance_set("worker").start()
        streams = [asyncio.create_task(stream(i)) for i in range(len(chunks_seen))]
        await wait_until(lambda: min(chunks_seen) >= 10, 30, "every stream to be running")
        [victim] = [w for w in workers if w.num_running() > 0][:1]
        victim.proc.proc.terminate()  # SIGTERM, what the local connector and Kubernetes send

        def marked() -> bool:
            info = view.get(victim.instance_id)
            return info is not None and info.draining

        await wait_until(marked, 10, "the worker to be marked draining in etcd")
        # New work meanwhile goes to the other worker and succeeds.
        late = await client.completions.create(model=MODEL, prompt="hello", max_tokens=8)
        assert late.usage is not None and late.usage.completion_tokens == 8

        results = await asyncio.wait_for(asyncio.gather(*streams), 60)
        assert results == [(MAX_TOKENS, "length")] * len(chunks_seen)
        assert await asyncio.to_thread(victim.proc.proc.wait, 30) == 0
        await view.wait_for(lambda found: victim.instance_id not in found, 5)
        log = victim.proc.log_text()
        assert "worker draining" in log and "worker drained" in log, log[-3000:]
        assert cluster.frontend is not None
        assert "migrating" not in cluster.frontend.log_text()  # finished where they ran
    finally:
        await discovery.close()
