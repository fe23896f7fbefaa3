"""ModelRouters: one worker view and router per model, built once, shared metrics, close order."""

from __future__ import annotations

from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.metrics import RouterMetrics
from tandem.router.model_routers import ModelRouters
from tandem.router.policies import RoundRobinRouter
from tandem.router.remote import RemoteRouter

from tests.support.fake_discovery import FakeDiscovery


def two_models() -> FakeDiscovery:
    discovery = FakeDiscovery()
    discovery.add_worker("a1", "model-a")
    discovery.add_worker("b1", "model-b")
    return discovery


async def test_each_model_gets_one_view_and_router_over_its_own_workers():
    discovery = two_models()
    routers = ModelRouters(RoutingConfig(router_mode="round-robin"), discovery, log_changes=False)  # type: ignore[arg-type]
    a = await routers.build("model-a")
    assert await routers.build("model-a") is a
    b = await routers.build("model-b")
    assert isinstance(a.router, RoundRobinRouter)
    assert (await a.router.route("r1", [1])).instance_id == "a1"
    assert (await b.router.route("r2", [1])).instance_id == "b1"
    assert [v.model for v in discovery.views] == ["model-a", "model-b"]
    assert all(v.started and not v.log_changes for v in discovery.views)
    assert routers.get("model-b") is b and routers.get("model-c") is None
    assert routers.routers() == [a.router, b.router]


async def test_every_models_kv_router_reports_into_the_shared_metrics():
    metrics = RouterMetrics()
    routers = ModelRouters(RoutingConfig(), two_models(), metrics=metrics)  # type: ignore[arg-type]
    for model, instance_id in (("model-a", "a1"), ("model-b", "b1")):
        route = await routers.build(model)
        assert isinstance(route.router, KvRouter)
        assert route.router.metrics is metrics.for_model(model)
        await route.router.route(f"r-{model}", list(range(32)))
        sample = metrics.registry.get_sample_value(
            "tandem_router_decisions_total", {"model": model, "worker": instance_id}
        )
        assert sample == 1.0
    assert routers.metrics is metrics
    await routers.close()


async def test_remote_url_routes_every_model_through_the_router_service():
    routers = ModelRouters(RoutingConfig(), two_models(), remote_url="router:7100")  # type: ignore[arg-type]
    route = await routers.build("model-b")
    assert isinstance(route.router, RemoteRouter)
    assert (route.router.endpoint, route.router.model) == ("router:7100", "model-b")
    assert len(route.workers) == 1  # the view is there to count the model's workers
    assert routers.metrics is None
    await routers.close()


async def test_close_stops_every_router_before_closing_the_views():
    discovery = two_models()
    routers = ModelRouters(RoutingConfig(router_mode="random"), discovery)  # type: ignore[arg-type]
    stopped: list[str] = []
    for model in ("model-a", "model-b"):
        route = await routers.build(model)

        async def stop(model: str = model) -> None:
            stopped.append(model)
            discovery.events.append(f"router stop {model}")

        route.router.stop = stop  # type: ignore[method-assign]
    await routers.close()
    assert discovery.events == [
        "view start model-a",
        "view start model-b",
        "router stop model-a",
        "router stop model-b",
        "view close model-a",
        "view close model-b",
    ]
    assert routers.routers() == []
