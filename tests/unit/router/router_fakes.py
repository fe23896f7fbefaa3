"""A worker view without etcd, for policy tests."""

from __future__ import annotations

from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.instance_set import ChangeCallback


class FakeWorkers:
    def __init__(self, *ids: str, total_blocks: int = 1000) -> None:
        self._instances: dict[str, InstanceInfo] = {}
        self._callbacks: list[ChangeCallback] = []
        self._num_added = 0
        for iid in ids:
            self.add(iid, total_blocks)

    @property
    def instances(self) -> dict[str, InstanceInfo]:
        return self._instances

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def add(
        self, iid: str, total_blocks: int = 1000, *, block_size: int = 16, model: str = ""
    ) -> None:
        """A worker that joins now: it is younger than every worker added before it."""
        info = InstanceInfo(
            iid,
            "worker",
            f"{iid}:1",
            model=model,
            block_size=block_size,
            total_blocks=total_blocks,
            started_at=float(self._num_added),
        )
        self._num_added += 1
        self._instances[iid] = info
        for cb in self._callbacks:
            cb("added", info)

    def remove(self, iid: str) -> None:
        info = self._instances.pop(iid)
        for cb in self._callbacks:
            cb("removed", info)
