"""Routing policies by name and `make_router`, the one way to build a router.

A policy is a `RouterFactory`: `factory(config, workers, deps) -> BaseRouter`.
The built-in ones are `kv`, `round-robin` and `random`; `register_policy`
adds more, and `RoutingConfig` accepts any name registered here. This module
imports no policy's implementation at load time (config.py reads the names),
so the `kv` index and its followers load only when a `kv` router is built.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tandem.runtime.discovery import Discovery
    from tandem.runtime.messaging import Messaging

    from .api import BaseRouter
    from .config import RoutingConfig
    from .metrics import ModelRouterMetrics
    from .worker_view import WorkerView


@dataclass(frozen=True, slots=True)
class RouterDeps:
    """What a policy may use besides its config and worker view; every field is optional."""

    messaging: Messaging | None = None
    """Connected NATS: `kv` follows KV events and load reports and shares load with replicas."""
    discovery: Discovery | None = None
    """etcd, for policies that look up more than their worker view."""
    metrics: ModelRouterMetrics | None = None
    """The model's share of the process's router metrics; None: the router makes its own."""
    clock: Callable[[], float] = time.monotonic
    """What `kv` ages load reports and requests by (a simulated fleet passes its own)."""
    rng: random.Random | None = None
    """Tie-breaks and sampling of `kv` and `random`; None: seeded from the OS."""


RouterFactory = Callable[["RoutingConfig", "WorkerView", RouterDeps], "BaseRouter"]


def _make_kv(config: RoutingConfig, workers: WorkerView, deps: RouterDeps) -> BaseRouter:
    from .kv_router import KvRouter

    return KvRouter(
        config,
        workers,
        messaging=deps.messaging,
        metrics=deps.metrics,
        rng=deps.rng,
        clock=deps.clock,
    )


def _make_round_robin(config: RoutingConfig, workers: WorkerView, deps: RouterDeps) -> BaseRouter:
    from .policies import RoundRobinRouter

    return RoundRobinRouter(workers)


def _make_random(config: RoutingConfig, workers: WorkerView, deps: RouterDeps) -> BaseRouter:
    from .policies import RandomRouter

    return RandomRouter(workers, deps.rng)


_POLICIES: dict[str, RouterFactory] = {
    "kv": _make_kv,
    "round-robin": _make_round_robin,
    "random": _make_random,
}


def register_policy(name: str, factory: RouterFactory) -> None:
    """Make `name` a valid `router_mode` built by `factory` (replaces a policy of that name)."""
    _POLICIES[name] = factory


def policy_names() -> tuple[str, ...]:
    """Every policy registered now, built-in ones first."""
    return tuple(_POLICIES)


def make_router(
    config: RoutingConfig, workers: WorkerView, deps: RouterDeps | None = None
) -> BaseRouter:
    """The router for `config.router_mode` over the live `workers` view.

    Without `deps.messaging`, `kv` routes from its own decisions only. Call
    `await router.start()` before routing and `await router.stop()` at shutdown.
    """
    try:
        factory = _POLICIES[config.router_mode]
    except KeyError:
        raise ValueError(
            f"unknown router mode {config.router_mode!r}; known: {sorted(_POLICIES)}"
        ) from None
    return factory(config, workers, deps if deps is not None else RouterDeps())
