"""etcd discovery: one lease per process, registrations under it, live views by prefix watch.

Keys are spelled in keys.py. Every registration is bound to the process's
lease, so a dead process disappears by itself within the TTL.

etcd may go away for a while. Nothing here raises to the caller because of
that: registrations are remembered and written again (under a new lease if
the old one expired) once etcd answers, and live views keep the last state
they saw until the watch resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from etcd3aio import Etcd3Client, prefix_range_end

from .etcd_client import ETCD_ERRORS, RETRY_SECONDS, new_etcd_client, normalize_endpoints
from .instance_info import InstanceInfo
from .instance_set import InstanceSet
from .keys import instance_key, instances_prefix, model_key, models_prefix
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 10


class Discovery:
    """Owns this process's etcd client, its lease, and what it registered under it."""

    def __init__(
        self, endpoints: str | list[str], namespace: str, lease_ttl: int = DEFAULT_LEASE_TTL
    ) -> None:
        self.endpoints = normalize_endpoints(endpoints)
        self.namespace = namespace
        self.lease_ttl = lease_ttl
        self._client = new_etcd_client(self.endpoints)
        self._lease_id: int | None = None
        self._registrations: dict[str, str] = {}
        self._unwritten: set[str] = set()  # registrations whose last write failed
        self._lease_task: asyncio.Task[None] | None = None
        self._lease_changed = asyncio.Event()
        self._views: list[InstanceSet] = []
        self._connected = False

    @property
    def client(self) -> Etcd3Client:
        return self._client

    @property
    def lease_id(self) -> int | None:
        return self._lease_id

    async def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Connect and keep a lease alive. With `wait`, return once the first lease is held."""
        await self._client.connect()
        self._connected = True
        self._lease_task = asyncio.create_task(self._keep_lease(), name="etcd-lease")
        if wait:
            await asyncio.wait_for(self._lease_changed.wait(), timeout)

    async def close(self) -> None:
        """Stop views and keepalive, revoke the lease (so registrations vanish at once)."""
        for view in list(self._views):
            await view.close()
        await cancel_and_wait(self._lease_task)
        if self._lease_id is not None and self._client.lease is not None:
            with contextlib.suppress(*ETCD_ERRORS):
                await self._client.lease.revoke(self._lease_id, timeout=2)
        if self._connected:
            await self._client.close()
            self._connected = False

    # -- registration ---------------------------------------------------------

    async def register_instance(self, info: InstanceInfo) -> None:
        """Publish `info` under this process's lease (again after any lease loss)."""
        await self.put_leased(
            instance_key(self.namespace, info.component, info.instance_id), info.to_json()
        )

    async def unregister_instance(self, info: InstanceInfo) -> None:
        key = instance_key(self.namespace, info.component, info.instance_id)
        self._registrations.pop(key, None)
        self._unwritten.discard(key)
        with contextlib.suppress(*ETCD_ERRORS):
            await self._client.kv.delete(key, timeout=2)  # type: ignore[union-attr]

    async def register_model(self, model: str, card: dict[str, Any]) -> None:
        """Publish a model card (JSON) under this process's lease."""
        await self.put_leased(model_key(self.namespace, model), json.dumps(card))

    async def put_leased(self, key: str, value: str) -> None:
        """Write `key` bound to the lease; remembered and re-written after etcd outages."""
        self._registrations[key] = value
        self._unwritten.add(key)
        if self._lease_id is None:
            return  # the lease loop writes it once it holds a lease
        try:
            await self._client.kv.put(key, value, lease=self._lease_id, timeout=5)  # type: ignore[union-attr]
            self._unwritten.discard(key)
        except ETCD_ERRORS as exc:
            log.warning("etcd put %s deferred until etcd answers: %s", key, exc)

    async def get_model_card(self, model: str) -> dict[str, Any] | None:
        resp = await self._client.kv.get(model_key(self.namespace, model), timeout=5)  # type: ignore[union-attr]
        return json.loads(resp.kvs[0].value) if resp.kvs else None

    async def list_models(self) -> dict[str, dict[str, Any]]:
        prefix = models_prefix(self.namespace)
        resp = await self._client.kv.get(prefix, range_end=prefix_range_end(prefix), timeout=5)  # type: ignore[union-attr]
        return {kv.key.decode()[len(prefix) :]: json.loads(kv.value) for kv in resp.kvs}

    # -- live views -------------------------------------------------------------

    def instance_set(
        self, component: str, model: str | None = None, *, log_changes: bool = True
    ) -> InstanceSet:
        """A live view of the instances of `component` (optionally serving `model`). Call `start()` on it.

        `log_changes=False` for a view that another view of the same instances already logs.
        """
        view = InstanceSet(
            self._client,
            instances_prefix(self.namespace, component),
            model,
            log_changes,
            on_close=self._forget_view,
        )
        self._views.append(view)
        return view

    def _forget_view(self, view: InstanceSet) -> None:
        with contextlib.suppress(ValueError):  # closed twice
            self._views.remove(view)

    # -- lease ----------------------------------------------------------------

    async def _keep_lease(self) -> None:
        outage_since: float | None = None
        while True:
            try:
                if self._lease_id is None:
                    grant = await self._client.lease.grant(self.lease_ttl, timeout=5)  # type: ignore[union-attr]
                    self._lease_id = grant.ID
                    self._unwritten.update(self._registrations)
                    log.info("etcd lease %x granted (ttl %ss)", grant.ID, self.lease_ttl)
                elif not await self._refresh_lease(self._lease_id):
                    log.warning(
                        "etcd lease %x expired; re-registering under a new lease", self._lease_id
                    )
                    self._lease_id = None
                    continue
                await self._write_unwritten(self._lease_id)
                self._lease_changed.set()
                if outage_since is not None:
                    log.info("etcd reachable again after %.1fs", time.monotonic() - outage_since)
                    outage_since = None
                await asyncio.sleep(max(self.lease_ttl / 3, 0.5))
            except asyncio.CancelledError:
                raise
            except ETCD_ERRORS as exc:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.warning("etcd unreachable, serving from what is known: %s", exc)
                await asyncio.sleep(RETRY_SECONDS)

    async def _write_unwritten(self, lease_id: int) -> None:
        for key in sorted(self._unwritten):
            value = self._registrations.get(key)
            if value is not None:
                await self._client.kv.put(key, value, lease=lease_id, timeout=5)  # type: ignore[union-attr]
                log.info("etcd registered %s", key)
            self._unwritten.discard(key)

    async def _refresh_lease(self, lease_id: int) -> bool:
        """One keepalive round trip; False if etcd says the lease is gone."""
        stream = self._client.lease.keep_alive(lease_id)  # type: ignore[union-attr]
        try:
            async with asyncio.timeout(5):
                async for response in stream:
                    return response.TTL > 0
            return False
        finally:
            stream.cancel()
