"""What the planner sees of one model's pool: its live workers and their recent load reports.

Live workers come from the etcd watch (`Discovery.instance_set`); load from
`LoadMetrics` on NATS. A report counts only while its worker is registered
and the report is younger than `max_age` (by local receive time, so worker
clock skew does not matter): a worker that died or stopped reporting must
not hold the pool up or down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.subscription import Subscription
from tandem.runtime.discovery import Discovery
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.instance_set import ChangeKind, InstanceSet
from tandem.runtime.messaging import Messaging
from tandem.runtime.wire.kv_events_pb2 import LoadMetrics

from .policy import WorkerLoad


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """Live worker count (draining ones left out: they are on their way out), per role, and
    the loads that count right now."""

    observed: int
    loads: tuple[WorkerLoad, ...]
    roles: dict[str, int] = field(default_factory=dict)
    role_loads: dict[str, tuple[WorkerLoad, ...]] = field(default_factory=dict)

    @property
    def is_disaggregated(self) -> bool:
        return bool(self.roles.get("prefill") or self.roles.get("decode"))


class LoadView:
    """Owns the worker watch and the load subscription for one model."""

    def __init__(
        self,
        discovery: Discovery,
        messaging: Messaging,
        model: str,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._discovery = discovery
        self._messaging = messaging
        self._model = model
        self._max_age = max_age
        self._clock = clock
        self._workers: InstanceSet | None = None
        self._subscription: Subscription | None = None
        self._last: dict[str, tuple[float, WorkerLoad]] = {}

    async def start(self) -> None:
        self._workers = self._discovery.instance_set("worker", self._model)
        self._workers.on_change(self._on_worker_change)
        await self._workers.start()
        self._subscription = await self._messaging.subscribe_load(self._on_load)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
        if self._workers is not None:
            await self._workers.close()
            self._workers = None

    def snapshot(self) -> PoolSnapshot:
        workers = self._workers.instances if self._workers is not None else {}
        now = self._clock()
        # Forget stale reports, including those of other models' workers.
        for instance_id in [i for i, (seen, _) in self._last.items() if now - seen > self._max_age]:
            del self._last[instance_id]
        serving = {iid: info for iid, info in workers.items() if not info.draining}
        loads = tuple(
            load for instance_id, (_, load) in self._last.items() if instance_id in serving
        )
        roles: dict[str, int] = {}
        role_loads: dict[str, tuple[WorkerLoad, ...]] = {}
        for info in serving.values():
            roles[info.role] = roles.get(info.role, 0) + 1
        for load in loads:
            role = serving[load.instance_id].role
            role_loads[role] = (*role_loads.get(role, ()), load)
        return PoolSnapshot(len(serving), loads, roles, role_loads)

    async def _on_load(self, metrics: LoadMetrics) -> None:
        # Reports of other models' workers arrive on the same subjects; they
        # are filtered by registration in snapshot() and pruned when stale.
        self._last[metrics.instance_id] = (
            self._clock(),
            WorkerLoad(
                instance_id=metrics.instance_id,
                active_blocks=metrics.active_blocks,
                total_blocks=metrics.total_blocks,
                num_running=metrics.num_running,
                num_waiting=metrics.num_waiting,
            ),
        )

    def _on_worker_change(self, kind: ChangeKind, info: InstanceInfo) -> None:
        if kind == "removed":
            self._last.pop(info.instance_id, None)
