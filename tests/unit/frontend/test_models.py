"""ModelRegistry: models appear as their workers register; every model's router reports metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from tandem.frontend.config import FrontendConfig
from tandem.frontend.models import ModelRegistry
from tandem.router.remote import RemoteRouter

from tests.support.fake_discovery import FakeDiscovery


async def started_registry(
    config: FrontendConfig, discovery: FakeDiscovery, registry: CollectorRegistry
) -> ModelRegistry:
    models = ModelRegistry(config, discovery, None, registry)  # type: ignore[arg-type]
    await models.start()
    async with asyncio.timeout(60):
        while len(models.served()) < 2:
            await asyncio.sleep(0.01)
    return models


async def test_routed_decisions_of_every_model_show_in_the_frontend_metrics():
    discovery = FakeDiscovery()
    discovery.add_worker("a1", "model-a")
    discovery.add_worker("b1", "model-b")
    registry = CollectorRegistry()
    models = await started_registry(FrontendConfig(), discovery, registry)
    try:
        for name, instance_id in (("model-a", "a1"), ("model-b", "b1")):
            model = models.get(name)
            assert model is not None and len(model.workers) == 1
            await model.router.route(f"r-{name}", list(range(64)))
            sample = registry.get_sample_value(
                "tandem_router_decisions_total", {"instance_id": instance_id}
            )
            assert sample == 1.0, name
        assert registry.get_sample_value("tandem_router_prompt_blocks_total") == 8.0
    finally:
        await models.stop()
    # Per-model views do not log workers (the all-workers view does) and close at stop.
    per_model = [v for v in discovery.views if v.model is not None]
    assert sorted(v.model for v in per_model) == ["model-a", "model-b"]
    assert all(not v.log_changes and v.closed for v in per_model)


async def test_with_router_url_every_model_goes_to_the_router_service():
    discovery = FakeDiscovery()
    discovery.add_worker("a1", "model-a")
    discovery.add_worker("b1", "model-b")
    registry = CollectorRegistry()
    config = FrontendConfig(router_url="router:7100")
    models = await started_registry(config, discovery, registry)
    try:
        routers = [m.router for m in models.known()]
        assert all(isinstance(r, RemoteRouter) for r in routers)
        assert sorted(r.model for r in routers) == ["model-a", "model-b"]  # type: ignore[attr-defined]
        assert registry.get_sample_value("tandem_router_prompt_blocks_total") is None
    finally:
        await models.stop()
