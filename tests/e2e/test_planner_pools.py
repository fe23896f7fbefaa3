"""`tandem up --prefill-workers 1 --decode-workers 1 --planner`: each pool scales on its own load.

Long streams fill the decode workers' KV cache: the planner grows the decode
pool alone (the prefill queue stays short) and the local connector starts a
decode worker; once calm, the pool shrinks again, the leaving decode worker
drains, and no request of the traffic still running fails or is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections import Counter
from pathlib import Path

import openai
from tandem.launcher.local_infra import LocalInfra, free_port
from tandem.runtime.discovery import Discovery

from tests.e2e.test_planner_local import _prompt
from tests.support.checks import wait_until
from tests.support.processes import ServiceProcess

HEAVY_TOKENS = 300
LIGHT_TOKENS = 100


async def test_decode_pool_grows_alone_and_shrinks_without_losing_a_request(
    infra: LocalInfra, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    # Prompts over 32 tokens are prefilled on the prefill worker, while fewer than 2
    # jobs are queued: its queue never holds more than 2 (the threshold is > 2.0).
    up = ServiceProcess(
        "tandem.launcher.cli",
        ["up", "--engine", "mocker",
         "--prefill-workers", "1", "--decode-workers", "1", "--planner",
         "--max-workers", "3", "--planner-adjustment-interval", "1",
         "--max-local-prefill-length", "32", "--max-prefill-queue-size", "2",
         "--num-kv-blocks", "64", "--http-port", str(port), "--http-host", "127.0.0.1",
         "--nats", infra.nats_url, "--etcd", infra.etcd_url, "--namespace", namespace],
        tmp_path,
    )  # fmt: skip
    discovery = Discovery(infra.etcd_url, namespace)
    await discovery.start()
    stop_heavy, stop_light = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[int]] = []
    try:
        workers = await discovery.instance_set("worker").start()

        def serving_roles() -> Counter[str]:
            assert up.is_alive(), up.log_text()[-5000:]
            for task in tasks:  # a failing request fails the test now, not at the deadline
                assert not task.done() or task.exception() is None, task.exception()
            return Counter(w.role for w in workers if not w.draining)

        await wait_until(lambda: "Tandem is serving" in up.log_text(), 60, "tandem up")
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60
        )
        [model] = [m.id async for m in client.models.list()]

        async def streams(seed: int, max_tokens: int, stop: asyncio.Event) -> int:
            """Streams until `stop`; each must end whole. Returns how many ran."""
            rng, done = random.Random(seed), 0
            while not stop.is_set():
                # Heavy: ~250-token prompts; light: a few words (~7 blocks a stream in all).
                prompt = _prompt(rng) if max_tokens == HEAVY_TOKENS else f"w{rng.randrange(10**5)}"
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}],
                    max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True},
                )  # fmt: skip
                finish, usage = None, None
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish = chunk.choices[0].finish_reason
                    usage = chunk.usage or usage
                assert finish == "length" and usage is not None, (finish, usage)
                assert usage.completion_tokens == max_tokens, usage
                done += 1
            return done

        heavy = [asyncio.create_task(streams(i, HEAVY_TOKENS, stop_heavy)) for i in range(6)]
        tasks += heavy
        await wait_until(lambda: serving_roles()["decode"] == 2, 60, "a second decode worker")
        assert serving_roles()["prefill"] == 1

        # Calm: four light streams go on (both decode workers serve some of them, KV
        # usage ~0.2) while the decode pool shrinks: the leaving worker drains its own.
        light = [asyncio.create_task(streams(100 + i, LIGHT_TOKENS, stop_light)) for i in range(4)]
        tasks += light
        stop_heavy.set()
        await asyncio.wait_for(asyncio.gather(*heavy), 60)
        await wait_until(lambda: len(workers) == 2, 60, "the decode pool back at one worker")
        stop_light.set()
        assert min(await asyncio.wait_for(asyncio.gather(*light), 60)) > 0
        assert serving_roles() == Counter(prefill=1, decode=1)

        text = up.log_text()
        assert re.search(r"scaling \S+ decode pool up: 1 -> 2 workers", text), text[-5000:]
        assert re.search(r"scaling \S+ decode pool down: 2 -> 1 workers", text), text[-5000:]
        assert "prefill pool up" not in text
        assert "started decode-1" in text and "stopped decode-1" in text
        # The leaving worker had streams in flight and finished them before it left.
        assert re.search(r"worker draining in_flight=[1-9]", text), text[-5000:]
        assert "worker drained" in text and "drain timed out" not in text, text[-5000:]
        assert up.stop(60) == 0, up.log_path.read_text()[-3000:]
    finally:
        stop_heavy.set()
        stop_light.set()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        up.stop(60)  # SIGTERM first: a SIGKILL would orphan its children
        await discovery.close()
