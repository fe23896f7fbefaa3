from __future__ import annotations

import pytest
from router_fakes import FakeWorkers
from tandem.router import policy_registry
from tandem.router.api import BaseRouter, NoWorkersError
from tandem.router.config import ROUTER_MODES, RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.metrics import RouterMetrics
from tandem.router.policies import RandomRouter, RoundRobinRouter
from tandem.router.policy_registry import RouterDeps, make_router, register_policy
from tandem.router.worker_view import WorkerView


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


@pytest.fixture
def policies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Policies registered by a test are gone after it."""
    monkeypatch.setattr(policy_registry, "_POLICIES", dict(policy_registry._POLICIES))


def test_built_in_modes_come_from_the_registry():
    assert ROUTER_MODES == ("kv", "round-robin", "random") == policy_registry.policy_names()


async def test_registered_policy_is_a_valid_mode_and_make_router_builds_it(policies: None):
    built: list[tuple[RoutingConfig, WorkerView, RouterDeps]] = []

    def factory(config: RoutingConfig, workers: WorkerView, deps: RouterDeps) -> BaseRouter:
        built.append((config, workers, deps))
        return RoundRobinRouter(workers)

    register_policy("first-worker", factory)
    config = RoutingConfig(router_mode="first-worker")
    workers = FakeWorkers("a", "b")
    metrics = RouterMetrics().for_model("m")
    router = make_router(config, workers, RouterDeps(metrics=metrics))
    assert isinstance(router, RoundRobinRouter)
    assert built == [(config, workers, RouterDeps(metrics=metrics))]
    assert (await router.route("r", [1])).instance_id == "a"
    assert "first-worker" not in ROUTER_MODES  # the flag choices stay the built-in ones


async def test_kv_routers_share_the_metrics_they_are_given():
    metrics = RouterMetrics().for_model("m")
    deps = RouterDeps(metrics=metrics)
    first = make_router(RoutingConfig(), FakeWorkers("a"), deps)
    second = make_router(RoutingConfig(), FakeWorkers("b"), deps)
    assert isinstance(first, KvRouter) and isinstance(second, KvRouter)
    assert first.metrics is second.metrics is metrics
    await second.route("r", list(range(32)))
    assert metrics.registry.get_sample_value(
        "tandem_router_decisions_total", {"model": "m", "worker": "b"}
    )
