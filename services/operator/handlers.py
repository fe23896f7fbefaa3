"""The kopf handlers: every event of a `TandemDeployment` renders it and applies the result.

Create, update (of the spec), resume (operator start) and a resync timer all
do the same thing: render the whole resource and reconcile it, so the cluster
converges on the spec whatever happened in between. A spec that cannot be
deployed is a permanent error (kopf posts it as an event on the resource and
does not retry until the spec changes); an API failure is retried.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from .crd import GROUP, PLURAL, VERSION
from .k8s_models import InvalidObject, validate_object
from .reconcile import Reconciler
from .render import SPEC_HASH_ANNOTATION, render
from .spec import SpecError

log = logging.getLogger("tandem.operator")


async def reconcile_body(reconciler: Reconciler, body: Any) -> dict[str, Any]:
    """Render `body`, check every object against its API model, apply; the status to record."""
    meta = body["metadata"]
    try:
        objects = render(body)
        for obj in objects:
            validate_object(obj)
    except (SpecError, InvalidObject) as exc:
        # An event on the resource says why (`kubectl describe tdep`); kopf does not retry.
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        raise kopf.PermanentError(str(exc)) from None
    result = await reconciler.reconcile(meta["name"], meta["namespace"], objects)
    hashes = {
        obj["metadata"]["name"]: obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        for obj in objects
        if obj["kind"] == "Deployment"
    }
    log.info(
        "reconciled tandemdeployment=%s/%s created=%d applied=%d deleted=%s",
        meta["namespace"],
        meta["name"],
        len(result.created),
        len(result.applied),
        ",".join(result.deleted) or "-",
    )
    return {"deployments": hashes, "deleted": list(result.deleted)}


async def connection_info(config: Any) -> kopf.ConnectionInfo:
    """The credentials of a `kubernetes` client Configuration, as kopf takes them."""
    header = await config.get_api_key_with_prefix("BearerToken") or await config.get_api_key_with_prefix("authorization")  # fmt: skip
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


def make_registry(reconciler: Reconciler, resync_interval: float) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers (no module-level state: one per operator)."""
    registry = kopf.OperatorRegistry()
    resource = (GROUP, VERSION, PLURAL)

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # kopf's own client (watches, patches, events) uses the operator's credentials.
        return await connection_info(reconciler.configuration)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # events on the resource: problems only
        settings.persistence.finalizer = f"{GROUP}/operator"

    async def on_change(body: Any, **_: Any) -> dict[str, Any]:
        return await reconcile_body(reconciler, body)

    # One id for all three: kopf records the result as status.reconcile.
    kopf.on.create(*resource, id="reconcile", registry=registry)(on_change)
    kopf.on.update(*resource, id="reconcile", field="spec", registry=registry)(on_change)
    kopf.on.resume(*resource, id="reconcile", registry=registry)(on_change)

    @kopf.timer(*resource, id="resync", interval=resync_interval,
                initial_delay=resync_interval, registry=registry)  # fmt: skip
    async def resync(body: Any, **_: Any) -> None:
        await reconcile_body(reconciler, body)

    return registry
