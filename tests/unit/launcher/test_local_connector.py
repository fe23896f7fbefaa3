"""The local connector: pools sized per role, newest stopped first, the budget kept."""

from __future__ import annotations

import asyncio
import time

import pytest
from tandem.launcher.local_connector import LocalConnector
from tandem.launcher.supervisor import ChildSpec, Supervisor
from tandem.planner.target import ReplicaTarget


class FakeSupervisor(Supervisor):
    """Records starts and stops in order; a stop waits for `release` (a worker draining)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def start(self, spec: ChildSpec) -> None:
        self.events.append(f"start {spec.name} {spec.argv[0]}")

    async def stop_child(self, name: str) -> bool:
        self.events.append(f"stop {name}")
        await self.release.wait()
        self.events.append(f"gone {name}")
        return True


def target(replicas: int, **pools: int) -> ReplicaTarget:
    return ReplicaTarget("m", replicas, "test", time.time(), pools=pools)


def spec(name: str, role: str) -> ChildSpec:
    return ChildSpec(name, [role])


async def test_each_pool_follows_its_own_size_with_names_never_reused() -> None:
    sup = FakeSupervisor()
    connector = LocalConnector(sup, spec, max_workers=6, roles=("prefill", "decode"))
    await connector.resize({"prefill": 1, "decode": 1}, "start")
    await connector.apply(target(3, prefill=1, decode=2))
    assert connector.pools == {"prefill": 1, "decode": 2}
    await connector.apply(target(2, prefill=1, decode=1))
    await connector.apply(target(3, prefill=1, decode=2))
    assert sup.events == [
        "start prefill-0 prefill", "start decode-0 decode", "start decode-1 decode",
        "stop decode-1", "gone decode-1", "start decode-2 decode",
    ]  # fmt: skip


async def test_a_target_without_pools_leaves_a_split_as_it_is() -> None:
    sup = FakeSupervisor()
    connector = LocalConnector(sup, spec, max_workers=4, roles=("prefill", "decode"))
    await connector.resize({"prefill": 1, "decode": 1}, "start")
    await connector.apply(target(3))
    assert connector.pools == {"prefill": 1, "decode": 1}


async def test_an_aggregated_pool_follows_replicas_capped_by_the_budget() -> None:
    sup = FakeSupervisor()
    connector = LocalConnector(sup, spec, max_workers=2)
    await connector.apply(target(5))
    assert connector.pools == {"aggregated": 2}
    assert sup.events == ["start worker-0 aggregated", "start worker-1 aggregated"]


@pytest.mark.parametrize("budget", [3, 4])
async def test_a_full_budget_shrinks_one_pool_before_the_other_grows(budget: int) -> None:
    sup = FakeSupervisor()
    connector = LocalConnector(sup, spec, max_workers=budget, roles=("prefill", "decode"))
    await connector.resize({"prefill": 1, "decode": 2}, "start")
    sup.events.clear()
    sup.release.clear()  # the decode worker drains until released
    moving = asyncio.create_task(connector.apply(target(3, prefill=2, decode=1)))
    await asyncio.sleep(0)
    while "stop decode-1" not in sup.events:
        await asyncio.sleep(0)
    if budget == 3:  # no room: the new prefill worker waits for the drain
        assert sup.events == ["stop decode-1"]
    else:  # room: it starts at once, the drain goes on beside it
        assert sup.events == ["start prefill-1 prefill", "stop decode-1"]
    sup.release.set()
    await moving
    assert sup.events[-1] in ("gone decode-1", "start prefill-1 prefill")
    assert connector.pools == {"prefill": 2, "decode": 1}


async def test_a_target_past_the_budget_is_capped_keeping_each_pool() -> None:
    sup = FakeSupervisor()
    connector = LocalConnector(sup, spec, max_workers=4, roles=("prefill", "decode"))
    await connector.resize({"prefill": 1, "decode": 1}, "start")
    await connector.apply(target(9, prefill=1, decode=8))
    assert connector.pools == {"prefill": 1, "decode": 3}
