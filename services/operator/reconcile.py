"""Rendered objects applied to a cluster: server-side apply, and removal of what is no longer asked for.

The resource is the source of truth. Every object `render` returns is
applied with server-side apply (field manager `tandem-operator`, forced),
so fields someone changed by hand come back and fields a new spec drops
go away; objects of this resource that the spec no longer asks for (the
planner turned off, aggregated became disaggregated) are deleted. One
field is not the operator's: the `replicas` of a worker Deployment the
planner scales (annotation `tandem.dev/replicas-owner: planner`), which it
sets only when it creates the Deployment.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .k8s_models import validate_object
from .render import MANAGED_BY, REPLICAS_OWNER_ANNOTATION, Obj

log = logging.getLogger("tandem.operator.reconcile")

FIELD_MANAGER = "tandem-operator"
_APPLY = "application/apply-patch+yaml"
KINDS = ("ConfigMap", "Service", "Deployment")
"""What the operator makes, in the order it applies them (config before the pods that read it)."""


def desired_body(obj: Mapping[str, Any], exists: bool) -> Obj:
    """What to send for `obj`: without `spec.replicas` once the planner owns a live Deployment."""
    body = copy.deepcopy(dict(obj))
    owner = (body.get("metadata", {}).get("annotations") or {}).get(REPLICAS_OWNER_ANNOTATION)
    if exists and owner == "planner":
        body["spec"].pop("replicas", None)
    return body


def stale(existing: Iterable[tuple[str, str]], rendered: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:  # fmt: skip
    """(kind, name) of the resource's objects in the cluster that the spec no longer asks for."""
    wanted = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered}
    return sorted(item for item in existing if item not in wanted)


def selector(name: str) -> str:
    """Label selector of every object the operator made for resource `name`."""
    return f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGED_BY}"


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    created: tuple[str, ...]
    applied: tuple[str, ...]
    deleted: tuple[str, ...]


class Reconciler:
    """Owns the API client the operator applies objects with (core/v1 and apps/v1)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes.aio.client import AppsV1Api, CoreV1Api

        self._api_client = api_client
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        core, apps = CoreV1Api(api_client), AppsV1Api(api_client)
        self._ops: dict[str, tuple[Any, Any, Any, Any, Any]] = {
            kind: (
                getattr(api, f"read_namespaced_{noun}"),
                getattr(api, f"create_namespaced_{noun}"),
                getattr(api, f"patch_namespaced_{noun}"),
                getattr(api, f"list_namespaced_{noun}"),
                getattr(api, f"delete_namespaced_{noun}"),
            )
            for kind, api, noun in (
                ("ConfigMap", core, "config_map"),
                ("Service", core, "service"),
                ("Deployment", apps, "deployment"),
            )
        }

    @property
    def configuration(self) -> Any:
        """The client's Configuration (server, credentials): kopf logs in with it too."""
        return self._api_client.configuration

    async def reconcile(self, name: str, namespace: str, objects: list[Obj]) -> ReconcileResult:
        # kopf runs a resource's timer beside its change handlers: one reconcile at a time.
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            return await self._reconcile(name, namespace, objects)

    async def _reconcile(self, name: str, namespace: str, objects: list[Obj]) -> ReconcileResult:
        created: list[str] = []
        applied: list[str] = []
        for kind in KINDS:
            for obj in (o for o in objects if o["kind"] == kind):
                label = f"{kind}/{obj['metadata']['name']}"
                if await self._apply(obj, namespace):
                    created.append(label)
                else:
                    applied.append(label)
        deleted = await self._prune(name, namespace, objects)
        return ReconcileResult(tuple(created), tuple(applied), tuple(deleted))

    async def _apply(self, obj: Obj, namespace: str) -> bool:
        """Create `obj` or apply it over what is there; True when it was created."""
        from kubernetes.aio.client.exceptions import ApiException

        read, create, patch, _, _ = self._ops[obj["kind"]]
        name = obj["metadata"]["name"]
        try:
            await read(name, namespace)
            exists = True
        except ApiException as exc:
            if exc.status != 404:
                raise
            exists = False
        body = desired_body(obj, exists)
        if not exists:
            validate_object(body)  # a bad object stops here, not half-applied at the server
            try:
                await create(namespace, body, field_manager=FIELD_MANAGER)
                return True
            except ApiException as exc:
                if exc.status != 409:  # made by someone else meanwhile: apply over it
                    raise
                body = desired_body(obj, True)
        await patch(name, namespace, body, field_manager=FIELD_MANAGER, force=True,
                    _content_type=_APPLY)  # fmt: skip
        return False

    async def _prune(self, name: str, namespace: str, objects: list[Obj]) -> list[str]:
        existing: list[tuple[str, str]] = []
        for kind in KINDS:
            listed = await self._ops[kind][3](namespace, label_selector=selector(name))
            existing += [(kind, item.metadata.name) for item in listed.items]
        deleted = []
        for kind, obj_name in stale(existing, objects):
            await self._ops[kind][4](obj_name, namespace)
            deleted.append(f"{kind}/{obj_name}")
        return deleted

    async def close(self) -> None:
        await self._api_client.close()
