"""A worker marked draining in etcd stays registered but gets no new request, under every policy."""

from __future__ import annotations

import dataclasses

import pytest
from router_fakes import FakeWorkers
from tandem.router.api import NoWorkersError
from tandem.router.config import ROUTER_MODES, RoutingConfig
from tandem.router.policy_registry import make_router
from tandem.runtime.block_hash import sequence_hashes
from tandem.runtime.instance_info import InstanceInfo


def _drain(workers: FakeWorkers, iid: str) -> None:
    # What the watch does when a worker re-puts its record: the same id, updated in place.
    workers.instances[iid] = dataclasses.replace(workers.instances[iid], draining=True)


@pytest.mark.parametrize("mode", ROUTER_MODES)
async def test_no_new_request_goes_to_a_draining_worker(mode: str) -> None:
    workers = FakeWorkers("a", "b", "c")
    router = make_router(RoutingConfig(router_mode=mode), workers)
    tokens = list(range(64))
    if mode == "kv":  # "b" holds the whole prompt: without the flag it would win
        router.index.store("b", sequence_hashes(tokens, 16))  # type: ignore[attr-defined]
    _drain(workers, "b")
    picks = {(await router.route(f"r{i}", tokens)).instance_id for i in range(20)}
    assert picks == {"a", "c"}
    _drain(workers, "a")
    _drain(workers, "c")
    with pytest.raises(NoWorkersError):
        await router.route("none-left", tokens)


def test_the_flag_round_trips_and_old_records_read_as_serving() -> None:
    info = InstanceInfo("w1", "worker", "h:1", draining=True)
    assert InstanceInfo.from_json(info.to_json()).draining
    assert not InstanceInfo.from_json(
        '{"instance_id":"w1","component":"worker","endpoint":"h:1"}'
    ).draining
