"""ModelRegistry: models appear as their workers register; every model's router reports metrics;
a model about to be served is 503 with Retry-After, an unknown one 404."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tandem.frontend.config import FrontendConfig
from tandem.frontend.errors import RETRY_AFTER_SECONDS, FrontendError
from tandem.frontend.models import ModelRegistry
from tandem.router.remote import RemoteRouter
from tandem.runtime.tokenizer import Tokenizer

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
                "tandem_router_decisions_total", {"model": name, "worker": instance_id}
            )
            assert sample == 1.0, name
            blocks = registry.get_sample_value("tandem_router_prompt_blocks_total", {"model": name})
            assert blocks == 4.0, name
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
        assert not any(m.name.startswith("tandem_router") for m in registry.collect())
    finally:
        await models.stop()


async def test_a_model_about_to_be_served_is_503_with_retry_after_until_then_404(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    discovery = FakeDiscovery()
    discovery.add_worker("a1", "model-a")
    discovery.cards["model-c"] = {"name": "model-c", "model_path": "", "context_length": 8,
                                  "block_size": 16}  # fmt: skip  # a card, no worker yet
    # The tokenizer load waits for the test: the window right after a (re)start.
    loaded = threading.Event()
    from_path = Tokenizer.from_path

    def slow_from_path(path: str, **kwargs: Any) -> Tokenizer:
        loaded.wait(30)
        return from_path(path, **kwargs)

    monkeypatch.setattr(Tokenizer, "from_path", slow_from_path)
    config = FrontendConfig(model_name="model-b")  # named, no --model-path: no worker yet
    models = ModelRegistry(config, discovery, None, CollectorRegistry())  # type: ignore[arg-type]

    async def status(name: str) -> int:
        try:
            await models.lookup(name)
        except FrontendError as exc:
            if exc.status == 503:
                assert exc.headers() == {"Retry-After": str(RETRY_AFTER_SECONDS)}
            return exc.status
        return 200

    try:
        assert await status("typo") == 503  # not started: nothing is known yet
        await models.start()
        for name in ("model-a", "model-b", "model-c", "typo"):
            assert await status(name) == 503, name  # the models found at start still load
        loaded.set()
        async with asyncio.timeout(60):
            while models.get("model-a") is None:
                await asyncio.sleep(0.01)
        assert [await status(n) for n in ("model-a", "model-b", "model-c", "typo")] == [
            200, 503, 503, 404]  # fmt: skip
        del discovery.cards["model-c"]  # its workers are gone for good
        assert await status("model-c") == 404
        lookups = discovery.card_lookups
        assert await status("x" * 100_000) == 404  # no model is named this long
        assert discovery.card_lookups == lookups  # answered without asking etcd
    finally:
        loaded.set()
        await models.stop()


async def test_prefill_workers_a_frontend_cannot_use_are_logged_once_per_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without NATS (a router mode other than kv, or --router-url) nothing sends prompts to
    prefill workers: the operator is told, not left to wonder why the flags do nothing."""
    discovery = FakeDiscovery()
    discovery.add_worker("d1", "model-a", role="decode")
    models = ModelRegistry(
        FrontendConfig(router_mode="round-robin"), discovery, None, CollectorRegistry()
    )  # type: ignore[arg-type]
    try:
        await models.start()
        with caplog.at_level("WARNING", logger="tandem.frontend.models"):
            discovery.add_worker("p1", "model-a", role="prefill")
            discovery.add_worker("p2", "model-a", role="prefill")
            discovery.add_worker("p3", "model-b", role="prefill")
        warned = [r.getMessage() for r in caplog.records if "prefill workers" in r.getMessage()]
        assert len(warned) == 2, warned
        assert "'model-a'" in warned[0] and "--router-mode kv" in warned[0]
        assert "'model-b'" in warned[1]
    finally:
        await models.stop()
