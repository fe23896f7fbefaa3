"""The planner connector of `tandem up --planner`: worker processes started and stopped locally."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .supervisor import ChildSpec, Supervisor

log = logging.getLogger(__name__)


class LocalConnector:
    """Owns the worker children of `tandem up --planner`, started and stopped through a Supervisor.

    It implements the planner's `Connector` protocol. Workers are named
    `worker-{n}` with n never reused, so logs tell a replacement from the
    worker it replaced. Scaling down stops the newest worker first: the oldest
    ones hold the warmest KV caches.
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
