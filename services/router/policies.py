"""Routing policies by name (`kv`, `round-robin`, `random`) and `make_router`, the one factory.

Every policy only ever picks workers currently in its live worker view (an
etcd `InstanceSet`: alive, registered under a lease).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from tandem.runtime.discovery import ChangeCallback, InstanceInfo

from .api import BaseRouter, NoWorkersError, RouteResult
from .config import RoutingConfig

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from tandem.runtime.discovery import Discovery
    from tandem.runtime.messaging import Messaging

    from .metrics import RouterMetrics


class WorkerView(Protocol):
    """What a policy needs of the live worker set (`InstanceSet` is one)."""

    @property
    def instances(self) -> dict[str, InstanceInfo]: ...

    def on_change(self, callback: ChangeCallback) -> None: ...


def candidates(workers: WorkerView, exclude: Collection[str]) -> list[InstanceInfo]:
    """Workers that may take a request, in a stable order; NoWorkersError if none."""
    infos = [info for iid, info in sorted(workers.instances.items()) if iid not in exclude]
    if not infos:
        raise NoWorkersError(
            "no worker available" + (f" (excluded: {sorted(exclude)})" if exclude else "")
        )
    return infos


class RoundRobinRouter(BaseRouter):
    """Cycles through the live workers; ignores caches and load."""

    def __init__(self, workers: WorkerView) -> None:
        self._workers = workers
        self._counter = itertools.count()

    async def route(
        self,
        request_id: str,
        token_ids: list[int],
        *,
        exclude: Collection[str] = (),
        max_tokens: int = 0,
    ) -> RouteResult:
        infos = candidates(self._workers, exclude)
        info = infos[next(self._counter) % len(infos)]
        return RouteResult(info.instance_id, info.endpoint)


class RandomRouter(BaseRouter):
    """Picks a live worker uniformly at random."""

    def __init__(self, workers: WorkerView, rng: random.Random | None = None) -> None:
        self._workers = workers
        self._rng = rng or random.Random()

    async def route(
        self,
        request_id: str,
        token_ids: list[int],
        *,
        exclude: Collection[str] = (),
        max_tokens: int = 0,
    ) -> RouteResult:
        info = self._rng.choice(candidates(self._workers, exclude))
        return RouteResult(info.instance_id, info.endpoint)


RouterFactory = Callable[..., BaseRouter]


def _make_kv(
    config: RoutingConfig,
    workers: WorkerView,
    messaging: Messaging | None,
    discovery: Discovery | None,
    registry: CollectorRegistry | None,
    metrics: RouterMetrics | None = None,
) -> BaseRouter:
    from .kv_router import KvRouter  # the index and its followers load only when used

    return KvRouter(config, workers, messaging=messaging, registry=registry, metrics=metrics)


_REGISTRY: dict[str, RouterFactory] = {
    "kv": _make_kv,
    "round-robin": lambda config, workers, *_: RoundRobinRouter(workers),
    "random": lambda config, workers, *_: RandomRouter(workers),
}


def register_policy(name: str, factory: RouterFactory) -> None:
    """Add a policy: `factory(config, workers, messaging, discovery, registry) -> BaseRouter`."""
    _REGISTRY[name] = factory


def make_router(
    config: RoutingConfig,
    workers: WorkerView,
    messaging: Messaging | None = None,
    discovery: Discovery | None = None,
    registry: CollectorRegistry | None = None,
    metrics: RouterMetrics | None = None,
) -> BaseRouter:
    """The router for `config.router_mode` over the live `workers` view.

    `messaging` (connected) is needed by `kv` to follow KV events / load
    metrics and share load with other routers; without it, `kv` routes from
    its own decisions only. Metrics go into `registry` when given; several
    routers (one per model) may instead share one `metrics`. Call
    `await router.start()` before routing and `await router.stop()` at shutdown.
    """
    try:
        factory = _REGISTRY[config.router_mode]
    except KeyError:
        raise ValueError(
            f"unknown router mode {config.router_mode!r}; known: {sorted(_REGISTRY)}"
        ) from None
    if metrics is not None and config.router_mode == "kv":
        return factory(config, workers, messaging, discovery, registry, metrics)
    return factory(config, workers, messaging, discovery, registry)
