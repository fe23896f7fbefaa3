"""The decode worker's view of its model's prefill workers: who is gone, where a moved job goes.

The frontend picks a request's prefill worker KV-aware; this view only
matters once that worker has left (its etcd record is gone: lease expired
after a crash, or revoked on shutdown). Then its jobs go to the live,
not draining prefill workers with the fewest jobs in the queue (JetStream's
count per worker's subject, plus those this view handed out in the same
batch). A retry is not chosen KV-aware: what it needs is to start soon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Protocol

from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.instance_set import ChangeKind, InstanceSet

log = logging.getLogger(__name__)

_MAX_GONE = 1024
"""Left prefill workers remembered: only a job published just after one left still names it."""


class QueueDepths(Protocol):
    """What the pool reads of the prefill queue (`PrefillQueue.depths`)."""

    async def depths(self, model: str) -> dict[str, int]: ...


class PrefillPool:
    """Owns a decode worker's watch on its model's prefill workers and the choice of a new one."""

    def __init__(self, view: InstanceSet, queue: QueueDepths, model: str) -> None:
        self._view = view
        self._queue = queue
        self._model = model
        self._gone: dict[str, None] = {}  # prefill workers that left (and did not come back)
        self._on_gone: list[Callable[[str], None]] = []
        view.on_change(self._changed)

    async def start(self) -> None:
        await self._view.start()

    async def close(self) -> None:
        await self._view.close()

    def on_gone(self, callback: Callable[[str], None]) -> None:
        """`callback(instance_id)` on the event loop when a prefill worker leaves."""
        self._on_gone.append(callback)

    def is_gone(self, instance_id: str) -> bool:
        """True when `instance_id` was a prefill worker here and has left since."""
        return instance_id in self._gone

    async def assign(self, num_jobs: int, avoid: Collection[str] = ()) -> list[str]:
        """A prefill worker for each of `num_jobs` jobs, least loaded first; [] when none is left."""
        live = [
            info.instance_id
            for info in self._view
            if _is_prefill(info) and not info.draining and info.instance_id not in avoid
        ]
        if not live:
            return []
        try:
            depths = await self._queue.depths(self._model)
        except Exception as exc:  # NATS away: spread the jobs evenly instead
            log.warning("prefill queue depths unreadable, spreading evenly: %s", exc)
            depths = {}
        load = {instance_id: depths.get(instance_id, 0) for instance_id in live}
        chosen = []
        for _ in range(num_jobs):
            target = min(live, key=lambda i: (load[i], i))
            load[target] += 1
            chosen.append(target)
        return chosen

    def _changed(self, kind: ChangeKind, info: InstanceInfo) -> None:
        if not _is_prefill(info):
            return
        if kind == "added":
            self._gone.pop(info.instance_id, None)
            return
        self._gone[info.instance_id] = None
        if len(self._gone) > _MAX_GONE:
            del self._gone[next(iter(self._gone))]  # the oldest
        for callback in self._on_gone:
            callback(info.instance_id)


def _is_prefill(info: InstanceInfo) -> bool:
    return info.role == "prefill"
