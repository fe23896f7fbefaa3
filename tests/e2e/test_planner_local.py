"""`tandem up --planner`: load grows the local worker pool, calm shrinks it, SIGTERM stops it all."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from pathlib import Path

import openai
from tandem.launcher.local_infra import LocalInfra, free_port
from tandem.runtime.discovery import Discovery

from tests.e2e.test_local_cluster import _pid_alive
from tests.support.checks import wait_until
from tests.support.processes import ServiceProcess


def _prompt(rng: random.Random) -> str:
    # Distinct prompts (shared prefixes would share KV blocks and keep usage
    # low) of ~250 tokens: with 300 output tokens, two requests fill 64 blocks.
    return " ".join(f"w{rng.randrange(100_000)}" for _ in range(40))


async def test_up_with_planner_grows_and_shrinks_the_pool(
    infra: LocalInfra, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    up = ServiceProcess(
        "tandem.launcher.cli",
        ["up", "--engine", "mocker",
         "--workers", "1", "--planner", "--max-workers", "2",
         "--planner-adjustment-interval", "1", "--num-kv-blocks", "64",
         "--http-port", str(port), "--http-host", "127.0.0.1",
         "--nats", infra.nats_url, "--etcd", infra.etcd_url, "--namespace", namespace],
        tmp_path,
    )  # fmt: skip
    discovery = Discovery(infra.etcd_url, namespace)
    await discovery.start()
    stop_load = asyncio.Event()
    load: list[asyncio.Task[None]] = []
    try:
        workers = await discovery.instance_set("worker").start()

        def serving() -> bool:
            assert up.is_alive(), up.log_text()
            return "Tandem is serving" in up.log_text()

        await wait_until(serving, 60, "tandem up to serve")
        assert len(workers) == 1
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
        )
        [model] = [m.id async for m in client.models.list()]

        async def stream_forever(seed: int) -> None:
            rng = random.Random(seed)
            while not stop_load.is_set():
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": _prompt(rng)}],
                    max_tokens=300, stream=True,
                )  # fmt: skip
                async for _ in stream:
                    if stop_load.is_set():
                        break
                await stream.close()

        load = [asyncio.create_task(stream_forever(i)) for i in range(6)]

        def grown() -> bool:
            for task in load:  # a failing request fails the test now, not at the deadline
                assert not task.done() or task.exception() is None, task.exception()
            return len(workers) == 2

        await wait_until(grown, 40, "a second worker to register")

        stop_load.set()
        await asyncio.wait_for(asyncio.gather(*load), 30)
        await wait_until(lambda: len(workers) == 1, 40, "the pool to shrink to one worker")
        text = up.log_text()
        assert re.search(r"scaling \S+ up: 1 -> 2 workers", text), text
        assert re.search(r"scaling \S+ down: 2 -> 1 workers", text), text

        child_pids = [int(p) for p in re.findall(r"started \S+ \(pid (\d+)\)", text)]
        assert len(child_pids) == 4  # worker-0, frontend, planner, worker-1
        assert up.stop(30) == 0, up.log_path.read_text()
        assert not [pid for pid in child_pids if _pid_alive(pid)]
    finally:
        stop_load.set()
        for task in load:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*load, return_exceptions=True)
        up.stop(30)  # SIGTERM first: a SIGKILL would orphan its children
        await discovery.close()
