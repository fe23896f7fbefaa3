"""One active planner per model: real planner processes and real etcd; a standby takes over."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

from tandem.launcher.local_infra import LocalInfra
from tandem.planner.election import LeaderElection
from tandem.runtime.discovery import Discovery
from tandem.runtime.keys import planner_leader_key, replicas_key

from tests.integration.test_planner import MODEL, FakePool, pool, start_planner  # noqa: F401
from tests.support.checks import wait_until
from tests.support.processes import ServiceProcess

LEASE_TTL = 3


def _leader_id(proc: ServiceProcess) -> str | None:
    match = re.search(r"became leader key=\S+ instance_id=(\S+)", proc.log_text())
    return match.group(1) if match else None


async def _writers(discovery: Discovery, key: str) -> list[str]:
    """The `planner` field of every version of the target key, oldest first (etcd history)."""
    kv = discovery.client.kv
    assert kv is not None
    head = await kv.get(key)
    writers = []
    for revision in range(head.kvs[0].create_revision, head.header.revision + 1):
        resp = await kv.get(key, revision=revision)
        if resp.kvs and resp.kvs[0].mod_revision == revision:
            writers.append(json.loads(resp.kvs[0].value)["planner"])
    return writers


async def test_standby_takes_over_when_the_leader_dies_and_targets_never_conflict(
    infra: LocalInfra,
    namespace: str,
    log_dir: Path,
    pool: FakePool,  # noqa: F811
) -> None:
    await pool.add("w1", active_blocks=95)  # high load: the leader scales up
    ttl = ["--leader-lease-ttl", str(LEASE_TTL)]
    planners = [start_planner(infra, namespace, log_dir, *ttl) for _ in range(2)]
    try:
        await wait_until(lambda: any(_leader_id(p) for p in planners), 20, "a leader")
        [leader] = [p for p in planners if _leader_id(p)]
        [standby] = [p for p in planners if p is not leader]
        standby.wait_log("standing by: leader is", timeout=10)
        first = _leader_id(leader)

        async def target_is(n: int) -> bool:
            target = await pool.target()
            return target is not None and target["replicas"] == n

        await wait_until(lambda: target_is(2), 20, "the leader to scale up")
        assert (await pool.target() or {})["planner"] == first
        assert _leader_id(standby) is None  # it never led, so it never wrote

        leader.kill()  # SIGKILL: no resignation, the lease has to run out
        killed_at = time.monotonic()
        await wait_until(lambda: _leader_id(standby) is not None, 4 * LEASE_TTL, "a takeover")
        took_over = time.monotonic() - killed_at
        second = _leader_id(standby)
        assert second != first
        # The new leader carries on from the target: a second high-load worker scales it up.
        await pool.add("w2", active_blocks=95)
        await wait_until(lambda: target_is(3), 20, "the new leader to scale up")
        assert (await pool.target() or {})["planner"] == second

        writers = await _writers(pool.discovery, replicas_key(namespace, MODEL))
        # One writer at a time: the first leader's writes, then only the second's.
        assert writers == [first] * writers.count(first) + [second] * writers.count(second)
        assert writers.count(first) >= 1 and writers.count(second) >= 1
        # Bounded by the wait above (4 TTLs); expected: the TTL plus a watch round trip.
        print(f"standby took over {took_over:.2f}s after the leader was killed (ttl {LEASE_TTL}s)")
    finally:
        for p in planners:
            p.stop()


async def test_a_planner_that_lost_its_lease_cannot_write(
    infra: LocalInfra, namespace: str
) -> None:
    """Even before it notices: its target write is conditional on holding the leader key."""
    a = Discovery(infra.etcd_url, namespace, lease_ttl=LEASE_TTL)
    b = Discovery(infra.etcd_url, namespace, lease_ttl=LEASE_TTL)
    await a.start()
    await b.start()
    key = planner_leader_key(namespace, MODEL)
    target = replicas_key(namespace, MODEL)
    ea = LeaderElection(a.client, key, "planner-a", lambda: a.lease_id)
    eb = LeaderElection(b.client, key, "planner-b", lambda: b.lease_id, recheck_seconds=0.2)
    try:
        await ea.campaign()
        assert ea.is_leader and await ea.put_if_leader(target, "from-a")
        standby = asyncio.create_task(eb.campaign())
        await asyncio.sleep(0)  # let it find the key taken (no timing depends on this)
        assert not standby.done()
        assert a.client.lease is not None and a.lease_id is not None
        await a.client.lease.revoke(a.lease_id)  # what an expired lease does to the key
        await asyncio.wait_for(standby, 10)
        assert eb.is_leader and await eb.put_if_leader(target, "from-b")
        assert not await ea.put_if_leader(target, "stale-a")  # lost, and now it knows
        assert not ea.is_leader and ea.lost.is_set()
        resp = await a.client.kv.get(target)  # type: ignore[union-attr]
        assert resp.kvs[0].value == b"from-b"
        await eb.resign()
        resp = await b.client.kv.get(key)  # type: ignore[union-attr]
        assert not resp.kvs  # resigned: the next standby need not wait for the lease
    finally:
        await ea.resign()
        await a.close()
        await b.close()
