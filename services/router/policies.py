"""The stateless built-in policies: `round-robin` and `random` (`kv` is kv_router.py).

Both only ever pick workers currently in their live worker view and ignore
caches and load; they are registered by name in policy_registry.py.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection

from .api import BaseRouter, RouteResult
from .worker_view import WorkerView, candidates


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
