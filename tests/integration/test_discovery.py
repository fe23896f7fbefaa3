"""etcd discovery against a real etcd: leases, watches, outages."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tandem.launcher.local_infra import LocalInfra, start_etcd
from tandem.runtime.discovery import Discovery
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.keys import instance_key


def _info(instance_id: str, model: str = "m") -> InstanceInfo:
    return InstanceInfo(
        instance_id, "worker", f"127.0.0.1:{1000 + len(instance_id)}", model, started_at=time.time()
    )


@pytest.fixture
async def discovery(infra: LocalInfra, namespace: str) -> AsyncIterator[Discovery]:
    d = Discovery(infra.etcd_url, namespace)
    await d.start()
    yield d
    await d.close()


async def test_registered_instance_appears_in_other_process_view_and_leaves_on_close(
    infra: LocalInfra, namespace: str, discovery: Discovery
) -> None:
    watcher = Discovery(infra.etcd_url, namespace)
    await watcher.start()
    try:
        view = await watcher.instance_set("worker").start()
        changes: list[tuple[str, str]] = []
        view.on_change(lambda kind, info: changes.append((kind, info.instance_id)))
        await discovery.register_instance(_info("w1"))
        await view.wait_for(lambda d: "w1" in d, timeout=10)
        assert view.get("w1") == _info("w1").__class__.from_json(view.get("w1").to_json())  # type: ignore[union-attr]
        await discovery.close()  # revokes the lease: the key goes at once
        await view.wait_for(lambda d: "w1" not in d, timeout=10)
        assert changes == [("added", "w1"), ("removed", "w1")]
    finally:
        await watcher.close()


async def test_model_filter_only_shows_matching_instances(discovery: Discovery) -> None:
    await discovery.register_instance(_info("a", model="m1"))
    await discovery.register_instance(_info("b", model="m2"))
    view = await discovery.instance_set("worker", model="m2").start()
    await view.wait_for(lambda d: "b" in d, timeout=10)
    assert set(view.instances) == {"b"}


async def test_a_quiet_view_does_not_repeat_the_change_log(
    discovery: Discovery, caplog: pytest.LogCaptureFixture
) -> None:
    loud = await discovery.instance_set("worker").start()
    quiet = await discovery.instance_set("worker", model="m", log_changes=False).start()
    with caplog.at_level(logging.INFO, logger="tandem.runtime.instance_set"):
        await discovery.register_instance(_info("w1"))
        for view in (loud, quiet):
            await view.wait_for(lambda d: "w1" in d, timeout=10)
    added = [r for r in caplog.records if r.getMessage().startswith("instance added")]
    assert len(added) == 1 and "w1" in added[0].getMessage()


async def test_model_card_round_trip(discovery: Discovery) -> None:
    await discovery.register_model("m1", {"name": "m1", "context_length": 2048})
    assert await discovery.get_model_card("m1") == {"name": "m1", "context_length": 2048}
    assert set(await discovery.list_models()) == {"m1"}


async def test_killed_process_disappears_within_lease_ttl(
    infra: LocalInfra, namespace: str, discovery: Discovery, tmp_path: Path
) -> None:
    ttl = 3
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from tandem.runtime.discovery import Discovery
        from tandem.runtime.instance_info import InstanceInfo
        async def main():
            d = Discovery({infra.etcd_url!r}, {namespace!r}, lease_ttl={ttl})
            await d.start()
            await d.register_instance(InstanceInfo("doomed", "worker", "127.0.0.1:1"))
            print("registered", flush=True)
            await asyncio.Event().wait()
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        assert line.strip() == b"registered"
        view = await discovery.instance_set("worker").start()
        await view.wait_for(lambda d: "doomed" in d, timeout=10)
        proc.kill()  # no chance to revoke: only lease expiry can remove it
        killed_at = time.monotonic()
        await view.wait_for(lambda d: "doomed" not in d, timeout=ttl + 5)
        assert time.monotonic() - killed_at <= ttl + 5
    finally:
        proc.kill()
        proc.wait()


async def test_lease_lost_is_replaced_and_keys_rewritten(
    discovery: Discovery, namespace: str
) -> None:
    await discovery.register_instance(_info("w1"))
    old_lease = discovery.lease_id
    assert old_lease is not None
    await discovery.client.lease.revoke(old_lease)  # type: ignore[union-attr]  # as if it had expired
    key = instance_key(namespace, "worker", "w1")

    async def rewritten() -> bool:
        resp = await discovery.client.kv.get(key)  # type: ignore[union-attr]
        return bool(resp.kvs) and resp.kvs[0].lease not in (0, old_lease)

    async with asyncio.timeout(15):
        while not await rewritten():
            await asyncio.sleep(0.1)
    assert discovery.lease_id not in (None, old_lease)


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[LocalInfra]:
    """An etcd of this test's own, so stopping it disturbs no other test."""
    etcd = start_etcd(tmp_path)
    yield etcd  # type: ignore[misc]
    etcd.stop()


async def test_etcd_outage_keeps_views_and_registration(private_etcd, namespace: str) -> None:  # type: ignore[no-untyped-def]
    etcd = private_etcd
    worker = Discovery(etcd.url, namespace)
    frontend = Discovery(etcd.url, namespace)
    await worker.start()
    await frontend.start()
    try:
        view = await frontend.instance_set("worker").start()
        await worker.register_instance(_info("w1"))
        await view.wait_for(lambda d: "w1" in d, timeout=10)

        etcd.stop()
        # Longer than the lease TTL: nothing may crash, the view keeps what it knew.
        outage = asyncio.create_task(asyncio.sleep(12))
        await worker.register_instance(_info("w2"))  # accepted now, written once etcd is back
        await outage
        assert "w1" in view.instances

        await asyncio.to_thread(etcd.restart)
        await view.wait_for(lambda d: {"w1", "w2"} <= set(d), timeout=30)
    finally:
        await frontend.close()
        await worker.close()
