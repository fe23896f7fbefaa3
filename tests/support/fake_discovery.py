"""An in-memory stand-in for `Discovery`: workers, model cards and live views without etcd."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tandem.runtime.instance_info import InstanceInfo, Role
from tandem.runtime.instance_set import ChangeCallback, ChangeKind


class FakeInstanceSet:
    """A live view of the fake's workers (of one model, or all); records start/close."""

    def __init__(self, discovery: FakeDiscovery, model: str | None, log_changes: bool) -> None:
        self._discovery = discovery
        self.model = model
        self.log_changes = log_changes
        self.started = False
        self.closed = False
        self._callbacks: list[ChangeCallback] = []

    @property
    def instances(self) -> dict[str, InstanceInfo]:
        return {
            iid: info
            for iid, info in sorted(self._discovery.workers.items())
            if self.model is None or info.model == self.model
        }

    def __iter__(self) -> Iterator[InstanceInfo]:
        return iter(list(self.instances.values()))

    def __len__(self) -> int:
        return len(self.instances)

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    async def start(self) -> FakeInstanceSet:
        self.started = True
        self._discovery.events.append(f"view start {self.model or '*'}")
        return self

    async def close(self) -> None:
        self.closed = True
        self._discovery.events.append(f"view close {self.model or '*'}")

    def notify(self, kind: ChangeKind, info: InstanceInfo) -> None:
        if self.model is None or info.model == self.model:
            for callback in self._callbacks:
                callback(kind, info)


class FakeDiscovery:
    """Workers and model cards in dicts; `events` lists view starts and closes in order."""

    def __init__(self) -> None:
        self.workers: dict[str, InstanceInfo] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        self.views: list[FakeInstanceSet] = []
        self.events: list[str] = []
        self.card_lookups = 0  # get_model_card calls

    def add_worker(
        self, instance_id: str, model: str, total_blocks: int = 1000, role: Role = "aggregated"
    ) -> InstanceInfo:
        """Register a worker of `model` (and a card for it, as a real worker does)."""
        info = InstanceInfo(
            instance_id,
            "worker",
            f"{instance_id}:1",
            model=model,
            role=role,
            block_size=16,
            total_blocks=total_blocks,
        )
        self.cards.setdefault(
            model, {"name": model, "model_path": "", "context_length": 8192, "block_size": 16}
        )
        self.workers[instance_id] = info
        for view in self.views:
            view.notify("added", info)
        return info

    def instance_set(
        self, component: str, model: str | None = None, *, log_changes: bool = True
    ) -> FakeInstanceSet:
        view = FakeInstanceSet(self, model, log_changes)
        self.views.append(view)
        return view

    async def get_model_card(self, model: str) -> dict[str, Any] | None:
        self.card_lookups += 1
        return self.cards.get(model)

    async def list_models(self) -> dict[str, dict[str, Any]]:
        return dict(self.cards)
