"""The planner connector of `tandem up --planner`: worker processes started and stopped locally."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from tandem.planner.target import ReplicaTarget

from .supervisor import ChildSpec, Supervisor

log = logging.getLogger(__name__)

AGGREGATED = "aggregated"


class LocalConnector:
    """Owns the worker children of `tandem up --planner`, started and stopped through a Supervisor.

    It implements the planner's `Connector` protocol. It runs one pool per
    role it was given: `aggregated`, or `prefill` and `decode` for a
    disaggregated model, whose targets carry a size per pool. Workers are
    named `worker-{n}` (aggregated) or `{role}-{n}`, with n never reused, so
    logs tell a replacement from the worker it replaced. Scaling a pool down
    stops its newest worker first (the oldest hold the warmest KV caches); a
    stopped worker drains (SIGTERM: marked draining, its requests finish)
    before it exits, and the pools never hold more than `max_workers` in all.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        worker_spec: Callable[[str, str], ChildSpec],
        max_workers: int,
        roles: tuple[str, ...] = (AGGREGATED,),
    ) -> None:
        self._supervisor = supervisor
        self._worker_spec = worker_spec  # (name, role) -> the child to start
        self._max_workers = max_workers
        self._names: dict[str, list[str]] = {role: [] for role in roles}
        self._next_index = dict.fromkeys(roles, 0)

    @property
    def replicas(self) -> int:
        return sum(len(names) for names in self._names.values())

    @property
    def pools(self) -> dict[str, int]:
        """Workers running per role."""
        return {role: len(names) for role, names in self._names.items()}

    @property
    def is_disaggregated(self) -> bool:
        return AGGREGATED not in self._names

    async def apply(self, target: ReplicaTarget) -> None:
        if not self.is_disaggregated:
            await self.resize({AGGREGATED: target.replicas}, target.reason)
        elif target.pools:
            unknown = set(target.pools) - set(self._names)
            if unknown:
                log.warning("target names pools %s this cluster does not run; ignored", sorted(unknown))  # fmt: skip
            sizes = {role: n for role, n in target.pools.items() if role in self._names}
            await self.resize(sizes, target.reason)
        else:
            log.warning("target of %d workers has no pools; the prefill and decode pools are "
                        "left as they are", target.replicas)  # fmt: skip

    async def resize(self, sizes: Mapping[str, int], reason: str) -> None:
        """Make each pool in `sizes` that size (pools not named keep theirs), within the budget."""
        wanted = self._capped({role: max(0, n) for role, n in sizes.items()})
        if all(len(self._names[role]) == n for role, n in wanted.items()):
            return
        log.info("local pools %s -> %s: %s", _sizes(self.pools), _sizes({**self.pools, **wanted}),
                 reason or "-")  # fmt: skip
        # Starts the budget allows now first (the pool that grew waits for no drain),
        # then the stops (drains, side by side), then the starts they made room for.
        await self._start_within_budget(wanted)
        stops = [
            self._names[role].pop() for role, n in wanted.items() for _ in range(len(self._names[role]) - n)
        ]  # fmt: skip
        await asyncio.gather(*(self._supervisor.stop_child(name) for name in stops))
        await self._start_within_budget(wanted)

    async def _start_within_budget(self, wanted: Mapping[str, int]) -> None:
        for role, n in wanted.items():
            names = self._names[role]
            while len(names) < n and self.replicas < self._max_workers:
                name = f"{'worker' if role == AGGREGATED else role}-{self._next_index[role]}"
                self._next_index[role] += 1
                await self._supervisor.start(self._worker_spec(name, role))
                names.append(name)

    def _capped(self, wanted: dict[str, int]) -> dict[str, int]:
        # The key may have been written by someone else (or a planner with other
        # bounds): never run more processes than this machine was sized for.
        total = sum({**self.pools, **wanted}.values())
        if total <= self._max_workers:
            return wanted
        capped = dict(wanted)
        while sum({**self.pools, **capped}.values()) > self._max_workers:
            role = max(capped, key=lambda r: capped[r])  # the biggest pool gives, down to 1
            if capped[role] <= 1:
                break
            capped[role] -= 1
        log.warning("target %s capped to %s by --max-workers %d", _sizes(wanted), _sizes(capped),
                    self._max_workers)  # fmt: skip
        return capped


def _sizes(pools: Mapping[str, int]) -> str:
    return ",".join(f"{role}:{n}" for role, n in sorted(pools.items()))
