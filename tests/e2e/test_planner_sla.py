"""`tandem up --planner --planner-mode sla`: a rate step up adds workers until ITL meets the
target; a drop removes them again, and no request fails or is cut."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from tandem.launcher.local_infra import LocalInfra, free_port
from tandem.runtime.discovery import Discovery

from tests.support.checks import metric_value, scrape, wait_until
from tests.support.processes import ServiceProcess

# A mocker whose decode slows down fast with the batch (ITL ~ 10 + 2.2 x batch ms), so
# a rate a 2-core machine can send needs several workers to meet ITL_TARGET_MS.
MOCKER = ["--decode-step-seconds", "0.01", "--decode-seq-seconds", "0.002"]
ITL_TARGET_MS = 30.0
PROMPT_TOKENS = 128
OUTPUT_TOKENS = 40


@dataclass
class OpenLoop:
    """Sends streaming completions at `rate` per second (open loop) and keeps every outcome."""

    url: str
    model: str
    rate: float = 0.0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    rng: random.Random = field(default_factory=lambda: random.Random(3))

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            next_at = time.monotonic()
            while not stop.is_set():
                if self.rate <= 0:
                    await asyncio.sleep(0.05)
                    next_at = time.monotonic()
                    continue
                next_at += self.rng.expovariate(self.rate)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                task = asyncio.create_task(self._one(session))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            await asyncio.gather(*list(self.tasks))

    async def _one(self, session: aiohttp.ClientSession) -> None:
        body = {
            "model": self.model,
            "prompt": [self.rng.randrange(100, 20_000) for _ in range(PROMPT_TOKENS)],
            "max_tokens": OUTPUT_TOKENS, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True},
        }  # fmt: skip
        try:
            async with session.post(f"{self.url}/v1/completions", json=body) as resp:
                text = (await resp.read()).decode()
        except aiohttp.ClientError as exc:
            self.failures.append(f"client {exc!r}")
            return
        if resp.status != 200:
            self.failures.append(f"HTTP {resp.status}: {text[:200]}")
            return
        events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]
        if events[-1:] != ["[DONE]"]:
            self.failures.append(f"stream cut: {text[-200:]}")
            return
        chunks = [json.loads(e) for e in events[:-1]]
        usage = chunks[-1].get("usage") or {}
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
        if usage.get("completion_tokens") != OUTPUT_TOKENS or finish[-1:] != ["length"]:
            self.failures.append(f"incomplete: usage={usage} finish={finish[-1:]}")
            return
        self.ok += 1


async def test_sla_planner_scales_to_the_itl_target_and_back_without_losing_requests(
    infra: LocalInfra, namespace: str, tmp_path: Path
) -> None:
    profile = tmp_path / "profile.json"
    made = subprocess.run(
        [sys.executable, "-m", "tandem.launcher.cli", "profile", "--output", str(profile),
         "--input-lengths", "128,512", "--concurrency", "1,4", "--context-lengths", "256,1024",
         "--batch-sizes", "1,4,8,16,32", "--decode-tokens", "16", *MOCKER],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert json.loads(profile.read_text())["decode"], profile.read_text()

    port = free_port()
    up = ServiceProcess(
        "tandem.launcher.cli",
        ["up", "--engine", "mocker",
         "--workers", "1", "--planner", "--max-workers", "4",
         "--planner-mode", "sla", "--planner-profile", str(profile),
         "--planner-itl-target-ms", str(ITL_TARGET_MS), "--planner-ttft-target-ms", "1000",
         "--planner-adjustment-interval", "2", "--http-port", str(port),
         "--http-host", "127.0.0.1", "--nats", infra.nats_url, "--etcd", infra.etcd_url,
         "--namespace", namespace, *MOCKER],
        tmp_path,
    )  # fmt: skip
    discovery = Discovery(infra.etcd_url, namespace)
    await discovery.start()
    stop_load = asyncio.Event()
    sender: asyncio.Task[None] | None = None
    try:
        workers = await discovery.instance_set("worker").start()
        planners = await discovery.instance_set("planner").start()

        def serving() -> bool:
            assert up.is_alive(), up.log_text()[-5000:]
            return "Tandem is serving" in up.log_text()

        await wait_until(serving, 90, "tandem up to serve")
        await wait_until(lambda: len(planners) == 1, 30, "the planner to register")
        metrics_url = f"http://{next(iter(planners)).endpoint}/metrics"
        model = next(iter(workers)).model
        load = OpenLoop(f"http://127.0.0.1:{port}", model, rate=2.0)
        sender = asyncio.create_task(load.run(stop_load))

        def serving_count() -> int:
            assert not load.failures, load.failures[:5]
            return sum(1 for w in workers if not w.draining)

        load.rate = 16.0  # one worker at ~16 requests/s would decode ~100 together: ITL ~230 ms
        await wait_until(lambda: serving_count() >= 3, 120, "the pool to grow to 3 workers")

        async def itl_met() -> bool:
            text = await asyncio.to_thread(scrape, metrics_url)
            itl = metric_value(
                text, "tandem_planner_latency_seconds", phase="itl", source="observed"
            )
            return serving_count() >= 3 and itl is not None and itl * 1000 <= ITL_TARGET_MS

        await wait_until(itl_met, 120, f"the observed ITL to meet {ITL_TARGET_MS} ms")

        load.rate = 1.0
        await wait_until(lambda: serving_count() == 1, 120, "the pool to shrink to 1 worker")
        stop_load.set()
        await asyncio.wait_for(sender, 60)
        assert not load.failures, load.failures[:5]
        assert load.ok > 100
        text = up.log_text()
        assert re.search(r"scaling \S+ up: \d -> [34] workers", text), text[-5000:]
        assert re.search(r"scaling \S+ down: \d -> [123] workers", text), text[-5000:]
        assert "worker drained" in text  # the workers that left finished their streams first
        assert "migrating" not in text
        assert re.search(r"planner decision model=\S+ mode=sla targets=aggregated:\d", text)
        assert up.stop(60) == 0, up.log_path.read_text()[-3000:]
    finally:
        stop_load.set()
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        up.stop(60)  # SIGTERM first: a SIGKILL would orphan its children
        await discovery.close()
