"""RoleView: a router over one pool sees only the workers of its roles, and their changes."""

from __future__ import annotations

from tandem.router.worker_view import SERVING_ROLES, RoleView
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.instance_set import ChangeCallback, ChangeKind


class _Base:
    """A mutable worker view that reports changes, as an InstanceSet does."""

    def __init__(self, *infos: InstanceInfo) -> None:
        self._instances = {i.instance_id: i for i in infos}
        self._callbacks: list[ChangeCallback] = []

    @property
    def instances(self) -> dict[str, InstanceInfo]:
        return self._instances

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def change(self, kind: ChangeKind, info: InstanceInfo) -> None:
        if kind == "added":
            self._instances[info.instance_id] = info
        else:
            del self._instances[info.instance_id]
        for callback in self._callbacks:
            callback(kind, info)


def _info(iid: str, role: str) -> InstanceInfo:
    return InstanceInfo(iid, "worker", f"{iid}:1", role=role)  # type: ignore[arg-type]


def test_aggregated_only_is_the_base_view_itself() -> None:
    base = _Base(_info("a", "aggregated"), _info("b", "aggregated"))
    assert RoleView(base, SERVING_ROLES).instances is base.instances


def test_each_pool_sees_its_roles_and_only_their_changes() -> None:
    base = _Base(_info("p", "prefill"), _info("d", "decode"))
    serving, prefill = RoleView(base, SERVING_ROLES), RoleView(base, ("prefill",))
    seen: list[tuple[str, str]] = []
    serving.on_change(lambda kind, info: seen.append((kind, info.instance_id)))
    assert set(serving.instances) == {"d"} and set(prefill.instances) == {"p"}
    base.change("added", _info("p2", "prefill"))
    base.change("added", _info("a", "aggregated"))
    assert set(serving.instances) == {"d", "a"} and set(prefill.instances) == {"p", "p2"}
    base.change("removed", _info("p", "prefill"))
    base.change("removed", _info("p2", "prefill"))
    assert seen == [("added", "a")]
    assert serving.instances is base.instances  # no prefill worker left: the base again
