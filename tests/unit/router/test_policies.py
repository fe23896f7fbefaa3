from __future__ import annotations

import pytest
from router_fakes import FakeWorkers
from tandem.router.api import NoWorkersError
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.policies import RandomRouter, RoundRobinRouter, make_router


async def test_round_robin_cycles_over_live_workers():
    workers = FakeWorkers("a", "b", "c")
    router = make_router(RoutingConfig(router_mode="round-robin"), workers)
    assert isinstance(router, RoundRobinRouter)
    picks = [(await router.route(f"r{i}", [1, 2, 3])).instance_id for i in range(6)]
    assert sorted(picks) == ["a", "a", "b", "b", "c", "c"]
    workers.remove("b")
    picks = {(await router.route(f"s{i}", [1])).instance_id for i in range(4)}
    assert picks == {"a", "c"}
    router.prefill_done("unknown")
    router.free("unknown")


async def test_random_respects_exclude_and_raises_without_workers():
    workers = FakeWorkers("a", "b")
    router = make_router(RoutingConfig(router_mode="random"), workers)
    assert isinstance(router, RandomRouter)
    assert {(await router.route(f"r{i}", [1], exclude=["a"])).instance_id for i in range(10)} == {
        "b"
    }
    with pytest.raises(NoWorkersError):
        await router.route("x", [1], exclude=["a", "b"])


async def test_kv_policy_from_factory():
    router = make_router(RoutingConfig(), FakeWorkers("a"))
    assert isinstance(router, KvRouter)
    with pytest.raises(ValueError):
        RoutingConfig(router_mode="nope")


def test_config_from_flags_and_environment():
    from tandem.router.config import RouterConfig
    from tandem.runtime.config import parse_config

    config = parse_config(
        RouterConfig,
        ["--router-mode", "round-robin", "--no-kv-events", "--kv-overlap-score-weight", "2"],
        environ={"TANDEM_ROUTER_TEMPERATURE": "0.5"},
    )
    assert (config.router_mode, config.kv_events, config.kv_overlap_score_weight) == (
        "round-robin",
        False,
        2.0,
    )
    assert config.router_temperature == 0.5
    with pytest.raises(ValueError):
        RoutingConfig(busy_threshold=0)
