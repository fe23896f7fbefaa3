"""One router per model for the standalone router service.

Frontends name the model in each RouteRequest; a worker serves one model,
so each model gets its own live worker view and router (sharing one set of
metrics). With `--model` set, every request goes to that model's router.
"""

from __future__ import annotations

import asyncio
import logging

from tandem.runtime.discovery import Discovery, InstanceSet
from tandem.runtime.messaging import Messaging

from .api import BaseRouter, NoWorkersError
from .config import RoutingConfig
from .metrics import RouterMetrics
from .policies import make_router

log = logging.getLogger(__name__)
COMPONENT = "worker"


class ModelRouters:
    """Owns the per-model worker views and routers; creates them on first use."""

    def __init__(
        self,
        config: RoutingConfig,
        discovery: Discovery,
        messaging: Messaging | None,
        metrics: RouterMetrics,
        model: str = "",
    ) -> None:
        self._config = config
        self._discovery = discovery
        self._messaging = messaging
        self._metrics = metrics
        self._fixed_model = model
        self._routers: dict[str, BaseRouter] = {}
        self._views: dict[str, InstanceSet] = {}
        self._known_models: set[str] = set()
        self._lock = asyncio.Lock()

    def routers(self) -> list[BaseRouter]:
        return list(self._routers.values())

    def key(self, model: str) -> str:
        """Requests without a model (or any, with --model) share one router."""
        return self._fixed_model or model

    async def get(self, model: str) -> BaseRouter:
        key = self.key(model)
        router = self._routers.get(key)
        if router is not None:
            return router
        async with self._lock:
            router = self._routers.get(key)
            if router is None:
                if key and key not in self._known_models:
                    if await self._discovery.get_model_card(key) is None:
                        raise NoWorkersError(f"no worker has registered model {key!r}")
                    self._known_models.add(key)
                workers = self._discovery.instance_set(COMPONENT, key or None)
                await workers.start()
                router = make_router(
                    self._config, workers, self._messaging, self._discovery, metrics=self._metrics
                )
                await router.start()
                self._views[key] = workers
                self._routers[key] = router
                log.info("routing model %r over %d workers", key or "*", len(workers))
        return router

    async def start(self) -> None:
        """Build the routers of every model known now, so a restart routes at once.

        The router for requests that name no model is built on first use."""
        if self._fixed_model:
            self._known_models.add(self._fixed_model)
            await self.get(self._fixed_model)
            return
        self._known_models.update(await self._discovery.list_models())
        for model in sorted(self._known_models):
            await self.get(model)

    async def close(self) -> None:
        for router in self._routers.values():
            await router.stop()
        for view in self._views.values():
            await view.close()
        self._routers.clear()
        self._views.clear()
