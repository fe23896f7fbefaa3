"""Connectors: what turns the planner's replica target into running workers.

The planner only writes `tandem/{namespace}/planner/replicas/{model}`; a
connector watches that key (`follow_target`) and makes the pool match. The
local connector starts and stops worker processes of `tandem up`; a
Kubernetes connector would patch a Deployment's replicas instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from tandem.runtime.supervisor import ChildSpec, Supervisor

from .target import TargetStore

log = logging.getLogger("tandem.planner.connector")


class Connector(Protocol):
    """Makes the number of running workers of one model equal to the target it is given.

    `scale_to` is called with every target the planner writes (and the one
    already there when the connector starts); it returns once the change is
    made (processes started or stopped), not once the workers serve.
    """

    async def scale_to(self, replicas: int, reason: str) -> None: ...


class LocalConnector:
    """Owns the worker children of `tandem up --planner`, started and stopped through a Supervisor.

    Workers are named `worker-{n}` with n never reused, so logs tell a
    replacement from the worker it replaced. Scaling down stops the newest
    worker first: the oldest ones hold the warmest KV caches.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        worker_spec: Callable[[str], ChildSpec],
        max_workers: int,
    ) -> None:
        self._supervisor = supervisor
        self._worker_spec = worker_spec
        self._max_workers = max_workers
        self._names: list[str] = []
        self._next_index = 0

    @property
    def replicas(self) -> int:
        return len(self._names)

    async def scale_to(self, replicas: int, reason: str) -> None:
        # The key may have been written by someone else (or a planner with
        # other bounds): never run more processes than this machine was sized for.
        wanted = max(0, min(replicas, self._max_workers))
        if wanted != replicas:
            log.warning(
                "target of %d workers capped to --max-workers %d", replicas, self._max_workers
            )
        if wanted == len(self._names):
            return
        log.info("local pool %d -> %d workers: %s", len(self._names), wanted, reason or "-")
        while len(self._names) < wanted:
            name = f"worker-{self._next_index}"
            self._next_index += 1
            await self._supervisor.start(self._worker_spec(name))
            self._names.append(name)
        while len(self._names) > wanted:
            name = self._names.pop()
            await self._supervisor.stop_child(name)


async def follow_target(store: TargetStore, model: str, connector: Connector) -> None:
    """Apply every replica target of `model` to `connector` until cancelled (readers watch)."""
    async for target in store.follow(model):
        if target is None:
            log.info("no replica target for %s; keeping the pool as it is", model)
            continue
        await connector.scale_to(target.replicas, target.reason)
