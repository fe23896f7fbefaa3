"""RouterService's choice of router per RouteRequest: built at start, unknown models refused."""

from __future__ import annotations

import pytest
from tandem.router.api import NoWorkersError
from tandem.router.config import RoutingConfig
from tandem.router.model_routers import ModelRouters
from tandem.router.service import RouterService

from tests.support.fake_discovery import FakeDiscovery


def service_over(discovery: FakeDiscovery, model: str = "") -> RouterService:
    routers = ModelRouters(RoutingConfig(router_mode="round-robin"), discovery)  # type: ignore[arg-type]
    return RouterService(routers, model=model)


async def test_start_builds_a_router_for_every_known_model():
    discovery = FakeDiscovery()
    discovery.add_worker("a1", "model-a")
    discovery.add_worker("b1", "model-b")
    service = service_over(discovery)
    await service.start()
    assert [v.model for v in discovery.views] == ["model-a", "model-b"]
    router = await service.router_for("model-b")
    assert (await router.route("r", [1])).instance_id == "b1"
    assert len(discovery.views) == 2


async def test_a_model_no_worker_registered_is_refused_and_a_new_one_built():
    discovery = FakeDiscovery()
    service = service_over(discovery)
    await service.start()
    with pytest.raises(NoWorkersError, match="no worker has registered model 'late'"):
        await service.router_for("late")
    discovery.add_worker("l1", "late")
    router = await service.router_for("late")
    assert (await router.route("r", [1])).instance_id == "l1"
    any_model = await service.router_for("")
    assert any_model is not router and (await any_model.route("s", [1])).instance_id == "l1"


async def test_fixed_model_serves_every_request():
    discovery = FakeDiscovery()
    discovery.add_worker("a1", "model-a")
    discovery.add_worker("b1", "model-b")
    service = service_over(discovery, model="model-a")
    await service.start()
    assert [v.model for v in discovery.views] == ["model-a"]
    router = await service.router_for("model-b")
    assert router is await service.router_for("")
    assert (await router.route("r", [1])).instance_id == "a1"
