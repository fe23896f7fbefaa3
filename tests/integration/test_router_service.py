"""`python -m tandem.router` as a real process, used by frontends through RemoteRouter."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tandem.launcher.local_infra import LocalInfra, free_port
from tandem.router.api import NoWorkersError
from tandem.router.remote import RemoteRouter
from tandem.runtime.model_card import DEFAULT_MODEL_NAME

from tests.integration.test_router_kv import BS, WorkerProc, prompt, serve, start_workers
from tests.support.checks import scrape
from tests.support.processes import ServiceProcess, infra_flags

ROUTER_READY = re.compile(r"router ready instance_id=(\S+) endpoint=(\S+)")


def start_router(
    infra: LocalInfra, namespace: str, log_dir: Path, port: int, metrics_port: int
) -> ServiceProcess:
    proc = ServiceProcess(
        "tandem.router",
        [
            *infra_flags(infra, namespace),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
        ],
        log_dir,
    )
    proc.wait_log("router ready", timeout=60)
    return proc


@pytest.fixture
def workers(infra: LocalInfra, namespace: str, log_dir: Path) -> Iterator[list[WorkerProc]]:
    procs = start_workers(infra, namespace, log_dir, 3)
    yield procs
    for w in procs:
        w.proc.stop()


async def test_router_restarted_mid_run_routes_from_a_rebuilt_index(
    infra: LocalInfra, namespace: str, log_dir: Path, workers: list[WorkerProc]
):
    port, metrics_port = free_port(), free_port()
    router_proc = start_router(infra, namespace, log_dir, port, metrics_port)
    remote = RemoteRouter(f"127.0.0.1:{port}")
    await remote.start()
    try:
        prompts = [prompt(700 + i, 16) for i in range(4)]
        owners = [await serve(remote, p) for p in prompts]
        # The worker's KV events reach the router asynchronously: repeat until it routes by them.
        for p, owner in zip(prompts, owners, strict=True):
            for _ in range(500):
                rid = uuid.uuid4().hex
                result = await remote.route(rid, p)
                remote.free(rid)
                if result.overlap_blocks == len(p) // BS:
                    break
            assert result.instance_id == owner

        router_proc.kill()  # crash mid-run: no goodbye, its counts are lost
        router_proc.stop()
        router_proc = start_router(infra, namespace, log_dir, port, metrics_port)
        for p, owner in zip(prompts, owners, strict=True):  # its very first decisions
            result = await remote.route(uuid.uuid4().hex, p)
            assert (result.instance_id, result.overlap_blocks) == (owner, len(p) // BS)
        await serve(remote, prompt(799, 4))
        # Frontends name their model: that model's router was rebuilt at start as well.
        by_model = RemoteRouter(f"127.0.0.1:{port}", model=DEFAULT_MODEL_NAME)
        unknown = RemoteRouter(f"127.0.0.1:{port}", model="no-such-model")
        await by_model.start()
        await unknown.start()
        try:
            result = await by_model.route(uuid.uuid4().hex, prompts[0])
            assert (result.instance_id, result.overlap_blocks) == (owners[0], len(prompts[0]) // BS)
            with pytest.raises(NoWorkersError):
                await unknown.route("x", [1])
        finally:
            await by_model.stop()
            await unknown.stop()

        text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{metrics_port}/metrics")
        # `remote` names no model: its requests went to the router of every model ("").
        found = re.search(r'^tandem_router_kv_cache_hit_ratio\{model=""\} (\S+)$', text, re.M)
        assert found is not None
        assert float(found.group(1)) > 0.9  # 5 full hits, one 4-block miss
        assert "tandem_router_kv_events_applied_total" in text
        assert 'tandem_router_decisions_total{model="",worker=' in text
    finally:
        await remote.stop()
        router_proc.stop()


async def test_remote_router_maps_no_workers(infra: LocalInfra, namespace: str, log_dir: Path):
    port = free_port()
    router_proc = start_router(infra, namespace, log_dir, port, 0)
    remote = RemoteRouter(f"127.0.0.1:{port}")
    await remote.start()
    try:
        with pytest.raises(NoWorkersError):
            await remote.route("r", [1, 2, 3])
        remote.free("r")
        remote.prefill_done("r")
    finally:
        await remote.stop()
        router_proc.stop()
