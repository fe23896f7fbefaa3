"""What every policy needs of the live worker set: `WorkerView` and `candidates()`.

An etcd `InstanceSet` (alive, registered under a lease) is a `WorkerView`;
`StaticWorkerView` is a fixed one (the fleet simulator's, tests', benchmarks').
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.instance_set import ChangeCallback

from .api import NoWorkersError


class WorkerView(Protocol):
    """The live workers of one model, and a callback when one joins or leaves."""

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


class StaticWorkerView:
    """A fixed set of workers that never changes (a simulated fleet, tests, benchmarks)."""

    def __init__(self, infos: Collection[InstanceInfo]) -> None:
        self._instances = {info.instance_id: info for info in infos}

    @property
    def instances(self) -> dict[str, InstanceInfo]:
        return self._instances

    def on_change(self, callback: ChangeCallback) -> None:
        pass  # nothing ever joins or leaves
