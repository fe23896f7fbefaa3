"""What every policy needs of the live worker set: `WorkerView` and `candidates()`.

An etcd `InstanceSet` (alive, registered under a lease) is a `WorkerView`;
`StaticWorkerView` is a fixed one (the fleet simulator's, tests', benchmarks').
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.instance_set import ChangeCallback, ChangeKind

from .api import NoWorkersError


class WorkerView(Protocol):
    """The live workers of one model, and a callback when one joins or leaves."""

    @property
    def instances(self) -> dict[str, InstanceInfo]: ...

    def on_change(self, callback: ChangeCallback) -> None: ...


def candidates(workers: WorkerView, exclude: Collection[str]) -> list[InstanceInfo]:
    """Workers that may take a request (not draining), in a stable order; NoWorkersError if none."""
    infos = [
        info
        for iid, info in sorted(workers.instances.items())
        if iid not in exclude and not info.draining
    ]
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


SERVING_ROLES = frozenset({"aggregated", "decode"})
"""Roles that take requests from routers; `prefill` workers take prefill jobs only."""


class RoleView:
    """The workers of `base` whose role is one of `roles`: what a router over one pool sees.

    While every worker's role is one of `roles` (a model served by aggregated
    workers alone), `instances` is the base view's own dict, as before roles.
    """

    def __init__(self, base: WorkerView, roles: Collection[str]) -> None:
        self._base = base
        self._roles = frozenset(roles)
        self._callbacks: list[ChangeCallback] = []
        self._num_other = sum(1 for i in base.instances.values() if i.role not in self._roles)
        base.on_change(self._on_base_change)

    @property
    def instances(self) -> dict[str, InstanceInfo]:
        base = self._base.instances
        if not self._num_other:
            return base
        roles = self._roles
        return {iid: info for iid, info in base.items() if info.role in roles}

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def _on_base_change(self, kind: ChangeKind, info: InstanceInfo) -> None:
        if info.role not in self._roles:
            self._num_other += 1 if kind == "added" else -1
            return
        for callback in self._callbacks:
            callback(kind, info)
