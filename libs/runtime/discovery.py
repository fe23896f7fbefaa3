"""etcd discovery: one lease per process, registrations under it, live views by prefix watch.

Keys (DESIGN.md): `tandem/{namespace}/instances/{component}/{instance_id}` and
`tandem/{namespace}/models/{model}`. Every registration is bound to the
process's lease, so a dead process disappears by itself within the TTL.

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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import grpc
from etcd3aio import Etcd3Client, EtcdError, prefix_range_end

from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

Role = Literal["aggregated", "prefill", "decode"]
ChangeKind = Literal["added", "removed"]
DEFAULT_LEASE_TTL = 10
_RETRY_SECONDS = 1.0
# Keep gRPC from backing off for minutes after an etcd outage.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# What an etcd call raises while etcd is unreachable (also for callers of `Discovery.client`).
ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)


def instances_prefix(namespace: str, component: str | None = None) -> str:
    base = f"tandem/{namespace}/instances/"
    return base if component is None else f"{base}{component}/"


def instance_key(namespace: str, component: str, instance_id: str) -> str:
    return f"{instances_prefix(namespace, component)}{instance_id}"


def models_prefix(namespace: str) -> str:
    return f"tandem/{namespace}/models/"


def model_key(namespace: str, model: str) -> str:
    return f"{models_prefix(namespace)}{model}"


def replicas_key(namespace: str, model: str) -> str:
    """Where the planner writes how many workers `model` should have (see services/planner)."""
    return f"tandem/{namespace}/planner/replicas/{model}"


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What a process publishes about itself under its lease."""

    instance_id: str
    component: str
    endpoint: str
    model: str = ""
    role: Role = "aggregated"
    block_size: int = 0
    total_blocks: int = 0
    started_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> InstanceInfo:
        data = json.loads(raw)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def normalize_endpoints(endpoints: str | list[str]) -> list[str]:
    """'http://a:2379,b:2379' -> ['a:2379', 'b:2379']."""
    items = endpoints.split(",") if isinstance(endpoints, str) else endpoints
    out = []
    for item in items:
        item = item.strip()
        for scheme in ("http://", "https://"):
            item = item.removeprefix(scheme)
        if item:
            out.append(item)
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


class Discovery:
    """Owns this process's etcd client, its lease, and what it registered under it."""

    def __init__(
        self, endpoints: str | list[str], namespace: str, lease_ttl: int = DEFAULT_LEASE_TTL
    ) -> None:
        self.endpoints = normalize_endpoints(endpoints)
        self.namespace = namespace
        self.lease_ttl = lease_ttl
        self._client = Etcd3Client(self.endpoints, rpc_max_attempts=1)
        self._client._manager.grpc_options.extend(_CHANNEL_OPTIONS)  # no public hook for options
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
        view = InstanceSet(self, instances_prefix(self.namespace, component), model, log_changes)
        self._views.append(view)
        return view

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
                await asyncio.sleep(_RETRY_SECONDS)

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


ChangeCallback = Callable[[ChangeKind, "InstanceInfo"], None]


class InstanceSet:
    """A live, read-only view of instances under one etcd prefix, kept current by a watch.

    `instances` maps instance_id -> InstanceInfo. Callbacks run on the event
    loop for each addition or removal. When etcd is unreachable the view keeps
    its last state; on reconnect it re-lists and reports the differences.
    """

    def __init__(
        self, discovery: Discovery, prefix: str, model: str | None, log_changes: bool = True
    ) -> None:
        self._discovery = discovery
        self._prefix = prefix
        self._model = model
        self._log_changes = log_changes
        self._instances: dict[str, InstanceInfo] = {}
        self._callbacks: list[ChangeCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._changed = asyncio.Condition()

    @property
    def instances(self) -> dict[str, InstanceInfo]:
        return self._instances

    def __iter__(self) -> Iterator[InstanceInfo]:
        return iter(list(self._instances.values()))

    def __len__(self) -> int:
        return len(self._instances)

    def get(self, instance_id: str) -> InstanceInfo | None:
        return self._instances.get(instance_id)

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    async def start(self, timeout: float = 30.0) -> InstanceSet:
        """Start watching; returns after the first full listing."""
        self._task = asyncio.create_task(self._run(), name=f"etcd-watch {self._prefix}")
        await asyncio.wait_for(self._synced.wait(), timeout)
        return self

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        with contextlib.suppress(ValueError):
            self._discovery._views.remove(self)

    async def wait_for(
        self, predicate: Callable[[dict[str, InstanceInfo]], bool], timeout: float
    ) -> None:
        """Wait until `predicate(instances)` holds (e.g. `lambda d: len(d) >= 2`)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self._instances))

    async def _run(self) -> None:
        client = self._discovery.client
        end = prefix_range_end(self._prefix)
        while True:
            try:
                resp = await client.kv.get(self._prefix, range_end=end, timeout=5)  # type: ignore[union-attr]
                listed = {}
                for kv in resp.kvs:
                    info = self._parse(kv.value)
                    if info is not None:
                        listed[info.instance_id] = info
                await self._replace(listed)
                self._synced.set()
                revision = resp.header.revision + 1
                assert client.watch is not None  # connected in Discovery.start()
                async for watch_resp in client.watch.watch(
                    self._prefix, range_end=end, start_revision=revision
                ):
                    if watch_resp.canceled:
                        break
                    for event in watch_resp.events:
                        key = event.kv.key.decode()
                        instance_id = key.rsplit("/", 1)[-1]
                        if event.type == 0:  # PUT
                            info = self._parse(event.kv.value)
                            if info is not None:
                                await self._set(info)
                        else:
                            await self._remove(instance_id)
            except asyncio.CancelledError:
                raise
            except ETCD_ERRORS as exc:
                log.warning(
                    "etcd watch on %s interrupted, keeping last view: %s", self._prefix, exc
                )
                await asyncio.sleep(_RETRY_SECONDS)

    def _parse(self, raw: bytes) -> InstanceInfo | None:
        try:
            info = InstanceInfo.from_json(raw)
        except (ValueError, TypeError) as exc:
            log.warning("ignoring malformed instance record under %s: %s", self._prefix, exc)
            return None
        if self._model is not None and info.model != self._model:
            return None
        return info

    async def _replace(self, listed: dict[str, InstanceInfo]) -> None:
        for instance_id in [i for i in self._instances if i not in listed]:
            await self._remove(instance_id)
        for info in listed.values():
            await self._set(info)

    async def _set(self, info: InstanceInfo) -> None:
        is_new = info.instance_id not in self._instances
        self._instances[info.instance_id] = info
        if is_new:
            if self._log_changes:
                log.info(
                    "instance added: %s %s at %s", info.component, info.instance_id, info.endpoint
                )
            await self._notify("added", info)

    async def _remove(self, instance_id: str) -> None:
        info = self._instances.pop(instance_id, None)
        if info is not None:
            if self._log_changes:
                log.info("instance removed: %s %s", info.component, instance_id)
            await self._notify("removed", info)

    async def _notify(self, kind: ChangeKind, info: InstanceInfo) -> None:
        for callback in self._callbacks:
            try:
                callback(kind, info)
            except Exception:  # a buggy listener must not stop discovery
                log.exception("instance change callback failed")
        async with self._changed:
            self._changed.notify_all()
