"""One live worker view and one router per model: the one place both the frontend
(embedded) and the standalone router service build them.

A worker serves one model, so each model gets its own `InstanceSet` and a
router over it: a policy from `make_router` (every model's router reporting
into one shared `RouterMetrics`, labelled with its model), or with
`remote_url` a `RemoteRouter` to a standalone router service. The view is there either way: the frontend counts
a model's live workers from it.

Roles: a model's router picks among its `aggregated` and `decode` workers
only (`RoleView`); its `prefill` workers get a router of their own
(`prefill_router`, the same policy and cost model over their own index),
built the first time a frontend asks, so a model served by aggregated
workers alone routes exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from tandem.runtime.discovery import Discovery
from tandem.runtime.instance_set import InstanceSet
from tandem.runtime.messaging import Messaging

from .api import BaseRouter
from .config import RoutingConfig
from .metrics import RouterMetrics
from .policy_registry import RouterDeps, make_router
from .remote import RemoteRouter
from .worker_view import SERVING_ROLES, RoleView

log = logging.getLogger(__name__)
WORKER_COMPONENT = "worker"  # the etcd component whose instances a router picks from


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """One model's live worker view and the router over it ('' = workers of any model)."""

    model: str
    workers: InstanceSet
    router: BaseRouter


class ModelRouters:
    """Owns the per-model worker views and routers: builds each once, stops them at close.

    `log_changes=False` for views whose workers another view already logs.
    """

    def __init__(
        self,
        config: RoutingConfig,
        discovery: Discovery,
        *,
        messaging: Messaging | None = None,
        metrics: RouterMetrics | None = None,
        remote_url: str = "",
        log_changes: bool = True,
    ) -> None:
        self.config = config
        self.discovery = discovery
        self.remote_url = remote_url
        self._deps = RouterDeps(messaging=messaging, discovery=discovery)
        self._metrics = metrics if metrics is not None or remote_url else RouterMetrics()
        self._log_changes = log_changes
        self._routes: dict[str, ModelRoute] = {}
        self._prefill_routers: dict[str, BaseRouter] = {}
        self._lock = asyncio.Lock()

    @property
    def metrics(self) -> RouterMetrics | None:
        """What every local router reports into (None with `remote_url`: that service reports)."""
        return self._metrics

    def get(self, model: str) -> ModelRoute | None:
        """The route of `model` if built."""
        return self._routes.get(model)

    def routers(self) -> list[BaseRouter]:
        return [route.router for route in self._routes.values()]

    async def build(self, model: str) -> ModelRoute:
        """The route of `model`, its view and router started on the first call."""
        route = self._routes.get(model)
        if route is not None:
            return route
        async with self._lock:
            route = self._routes.get(model)
            if route is None:
                route = self._routes[model] = await self._start_route(model)
                log.info("routing model %r over %d workers", model or "*", len(route.workers))
        return route

    async def prefill_router(self, model: str) -> BaseRouter | None:
        """The router over `model`'s prefill workers, started on the first call (None with
        `remote_url`: the router service routes requests, not prefill jobs)."""
        router = self._prefill_routers.get(model)
        if router is not None or self.remote_url:
            return router
        route = await self.build(model)
        async with self._lock:
            router = self._prefill_routers.get(model)
            if router is None:
                router = self._make_router(model, RoleView(route.workers, ("prefill",)))
                await router.start()
                self._prefill_routers[model] = router
                log.info("routing prefill jobs of model %r", model or "*")
        return router

    def _make_router(self, model: str, workers: RoleView) -> BaseRouter:
        metrics = None if self._metrics is None else self._metrics.for_model(model)
        return make_router(self.config, workers, replace(self._deps, metrics=metrics))

    async def _start_route(self, model: str) -> ModelRoute:
        workers = self.discovery.instance_set(
            WORKER_COMPONENT, model or None, log_changes=self._log_changes
        )
        await workers.start()
        router: BaseRouter
        if self.remote_url:
            router = RemoteRouter(self.remote_url, model=model)
        else:
            router = self._make_router(model, RoleView(workers, SERVING_ROLES))
        try:
            await router.start()
        except BaseException:
            await workers.close()
            raise
        return ModelRoute(model, workers, router)

    async def close(self) -> None:
        """Stop every router, then close the views they follow."""
        routes = list(self._routes.values())
        self._routes.clear()
        prefill, self._prefill_routers = list(self._prefill_routers.values()), {}
        for router in prefill:
            await router.stop()
        for route in routes:
            await route.router.stop()
        for route in routes:
            await route.workers.close()
