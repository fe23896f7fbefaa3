"""A real planner process against real nats + etcd, fed by fake workers registered in etcd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.discovery import Discovery
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.keys import replicas_key
from tandem.runtime.messaging import Messaging
from tandem.runtime.wire.kv_events_pb2 import LoadMetrics

from tests.support.checks import metric_value, scrape, wait_until
from tests.support.processes import ServiceProcess, infra_flags

MODEL = "planner-test-model"


TOTAL_BLOCKS = 100


@dataclass
class FakePool:
    """Fake workers: registered in etcd, reporting whatever `active` says every 0.1 s."""

    discovery: Discovery
    messaging: Messaging
    active: dict[str, int] = field(default_factory=dict)

    async def add(self, instance_id: str, active_blocks: int) -> None:
        self.active[instance_id] = active_blocks
        await self.discovery.register_instance(
            InstanceInfo(instance_id, "worker", "127.0.0.1:1", model=MODEL,
                         total_blocks=TOTAL_BLOCKS, started_at=time.time())
        )  # fmt: skip

    async def report_forever(self) -> None:
        while True:
            for instance_id, active in list(self.active.items()):
                await self.messaging.publish_load(
                    LoadMetrics(instance_id=instance_id, total_blocks=TOTAL_BLOCKS,
                                active_blocks=active, num_running=1, timestamp=time.time())
                )  # fmt: skip
            await asyncio.sleep(0.1)

    async def target(self) -> dict[str, Any] | None:
        resp = await self.discovery.client.kv.get(replicas_key(self.discovery.namespace, MODEL))  # type: ignore[union-attr]
        return json.loads(resp.kvs[0].value) if resp.kvs else None


@pytest.fixture
async def pool(infra: LocalInfra, namespace: str) -> AsyncIterator[FakePool]:
    discovery = Discovery(infra.etcd_url, namespace)
    messaging = Messaging(infra.nats_url, namespace)
    await discovery.start()
    await messaging.connect()
    fake = FakePool(discovery, messaging)
    reporter = asyncio.create_task(fake.report_forever())
    yield fake
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    await messaging.close()
    await discovery.close()


def start_planner(infra: LocalInfra, namespace: str, log_dir: Path, *extra: str) -> ServiceProcess:
    args = [*infra_flags(infra, namespace), "--model", MODEL, "--adjustment-interval", "0.3",
            "--max-workers", "3", "--scale-down-intervals", "2", "--metrics-host", "127.0.0.1",
            "--log-level", "DEBUG", *extra]  # fmt: skip
    proc = ServiceProcess("tandem.planner", args, log_dir)
    proc.wait_log("planner ready", timeout=30)
    return proc


async def test_planner_scales_up_under_kv_pressure_and_back_down(
    infra: LocalInfra, namespace: str, log_dir: Path, pool: FakePool
) -> None:
    await pool.add("w1", active_blocks=95)  # 0.95 > 0.8
    planner = start_planner(infra, namespace, log_dir)
    try:

        async def replicas_is(n: int) -> bool:
            target = await pool.target()
            return target is not None and target["replicas"] == n

        await wait_until(lambda: replicas_is(2), 20, "the target to reach 2 workers")
        target = await pool.target()
        assert target is not None
        assert set(target) == {"model", "replicas", "reason", "decided_at", "pools", "planner"}
        assert target["model"] == MODEL and target["pools"] == {}
        assert re.search(rf"planner ready instance_id={target['planner']} ", planner.log_text())
        assert "kv_usage=0.95" in target["reason"]
        assert abs(target["decided_at"] - time.time()) < 30

        # The connector's part: a second worker appears; the load spreads and drops.
        await pool.add("w2", active_blocks=5)
        pool.active["w1"] = 5
        await wait_until(lambda: replicas_is(1), 20, "the target to go back to 1 worker")
        target = await pool.target()
        assert target is not None and "low load" in target["reason"]

        # The planner writes the target, then logs the decision: wait for the line.
        scaled_down = re.compile(r"scaling \S+ down: 2 -> 1 workers")
        await wait_until(
            lambda: scaled_down.search(planner.log_text()) is not None,
            10,
            "the scale-down to be logged",
        )
        log = planner.log_text()
        assert re.search(r"scaling \S+ up: 1 -> 2 workers", log), log
        [metrics] = re.findall(r"planner ready .* metrics=(\S+)", log)
        text = await asyncio.to_thread(scrape, f"http://{metrics}/metrics")
        assert metric_value(text, "tandem_planner_scaling_events_total", direction="up") == 1.0, (
            text
        )
        assert metric_value(text, "tandem_planner_scaling_events_total", direction="down") == 1.0
        assert metric_value(text, "tandem_planner_desired_replicas") == 1.0
        assert metric_value(text, "tandem_planner_observed_replicas") == 2.0
        assert metric_value(text, "tandem_planner_is_leader") == 1.0
    finally:
        assert planner.stop() == 0, planner.log_text()


async def test_restarted_planner_resumes_from_the_target_in_etcd(
    infra: LocalInfra, namespace: str, log_dir: Path, pool: FakePool
) -> None:
    await pool.add("w1", active_blocks=50)
    await pool.discovery.client.kv.put(  # type: ignore[union-attr]
        replicas_key(namespace, MODEL),
        json.dumps({"model": MODEL, "replicas": 2, "reason": "earlier run", "decided_at": 0.0}),
    )
    planner = start_planner(infra, namespace, log_dir)
    try:
        planner.wait_log("resuming from target 2 workers", timeout=10)
        # Only one of the two workers is live: the planner waits instead of deciding again.
        planner.wait_log("waiting for the pool to reach 2 workers (live: 1)", timeout=10)
        target = await pool.target()
        assert target is not None and target["replicas"] == 2
    finally:
        assert planner.stop() == 0, planner.log_text()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--min-workers", "3", "--max-workers", "2"],
            "--max-workers (2) must be >= --min-workers (3)",
        ),
        (["--scale-up-kv-usage", "1.5"], "--scale-up-kv-usage must be in (0, 1], got 1.5"),
        (["--scale-down-kv-usage", "0.9"], "must be below --scale-up-kv-usage"),
        (["--min-workers", "0"], "--min-workers must be at least 1"),
        (["--adjustment-interval", "abc"], "invalid"),
        (["--mode", "sla"], "--mode sla needs --profile"),
        (["--mode", "sla", "--profile", "p.json"], "--mode sla needs --frontend-url"),
        (["--predictor", "arima"], "invalid choice: 'arima'"),
        (["--leader-lease-ttl", "1"], "--leader-lease-ttl must be at least 2 seconds"),
    ],
)
def test_bad_flags_exit_with_a_usage_error(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tandem.planner", *flags], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_profile_is_one_line_and_exit_78(tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    result = subprocess.run(
        [sys.executable, "-m", "tandem.planner", "--mode", "sla", "--profile", str(missing),
         "--frontend-url", "http://127.0.0.1:1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert f"cannot read profile {missing}" in result.stderr
    assert "Traceback" not in result.stderr
