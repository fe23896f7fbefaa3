"""--mode sla with prefill and decode workers: two pools, each sized from its own demand.

Real mocker workers registered with their roles, a real planner process, and a
real HTTP server standing in for the frontend's /metrics (so the test sets the
demand the planner sees).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp import web
from prometheus_client import generate_latest
from tandem.frontend.metrics import FrontendMetrics
from tandem.launcher.local_infra import LocalInfra
from tandem.planner.profile import DecodePoint, PrefillPoint, WorkerProfile
from tandem.runtime.discovery import Discovery
from tandem.runtime.keys import replicas_key

from tests.support.checks import wait_until
from tests.support.processes import ServiceProcess, infra_flags, spawn_mocker_worker, worker_ready

MODEL = "pools-model"


def _profile(path: Path) -> None:
    # Prefill 10k prompt tokens/s within any TTFT target; decode ITL 10 + 0.5 x batch ms.
    prefill = tuple(PrefillPoint(n, c, 10.0 * c, 10_000.0) for n in (128, 4096) for c in (1, 8))
    decode = tuple(
        DecodePoint(b, ctx, 10 + 0.5 * b, b / (10 + 0.5 * b) * 1000)
        for ctx in (256, 8192)
        for b in (1, 16, 64)
    )
    WorkerProfile("mocker", MODEL, prefill, decode).save(path)


async def test_prefill_and_decode_pools_follow_their_own_demand(
    infra: LocalInfra, namespace: str, log_dir: Path, tmp_path: Path
) -> None:
    metrics = FrontendMetrics()
    demand = {"isl": 2000, "osl": 10}

    async def page(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def feed() -> None:  # 20 requests/s of the current shape
        m = metrics.model(MODEL)
        while True:
            for _ in range(5):
                m.input_tokens.observe(demand["isl"])
                m.output_tokens.observe(demand["osl"])
            await asyncio.sleep(0.25)

    feeder = asyncio.create_task(feed())
    profile = tmp_path / "profile.json"
    _profile(profile)
    roles = ("prefill", "decode")
    workers = [
        spawn_mocker_worker(infra, namespace, log_dir, "--model-name", MODEL,
                            "--disaggregation-mode", role, "--speedup-ratio", "100")
        for role in roles
    ]  # fmt: skip
    planner: ServiceProcess | None = None
    discovery = Discovery(infra.etcd_url, namespace)
    await discovery.start()
    try:
        for w in workers:
            worker_ready(w, timeout=60)
        planner = ServiceProcess(
            "tandem.planner",
            [*infra_flags(infra, namespace), "--model", MODEL, "--mode", "sla",
             "--profile", str(profile), "--frontend-url", f"http://127.0.0.1:{port}",
             "--adjustment-interval", "0.5", "--scale-down-intervals", "2",
             "--max-workers", "10", "--max-decode-workers", "20", "--metrics-host", "127.0.0.1"],
            log_dir,
        )  # fmt: skip

        async def pools() -> dict[str, int]:
            resp = await discovery.client.kv.get(replicas_key(namespace, MODEL))  # type: ignore[union-attr]
            return json.loads(resp.kvs[0].value)["pools"] if resp.kvs else {}

        async def pools_are(expected: dict[str, int]) -> bool:
            return await pools() == expected

        # 20/s x 2000 prompt tokens over 10k tokens/s a worker: 4 prefill workers.
        await wait_until(lambda: pools_are({"prefill": 4, "decode": 1}), 30, "prompt-heavy pools")
        # 40k output tokens/s: decode wants 25, prefill 1; --max-workers 10 holds them to 9 + 1.
        demand.update(isl=100, osl=2000)
        await wait_until(
            lambda: pools_are({"prefill": 1, "decode": 10 - 1}), 30, "output-heavy pools in budget"
        )
        log = planner.log_text()
        assert "targets=decode:1,prefill:4 live=decode:1,prefill:1" in log, log[-3000:]
    finally:
        feeder.cancel()
        if planner is not None:
            assert planner.stop() == 0, planner.log_text()[-3000:]
        for w in workers:
            w.stop()
        await discovery.close()
        await runner.cleanup()
