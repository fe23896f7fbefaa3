"""Live views of the instances registered in etcd, kept current by a prefix watch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Literal

from etcd3aio import Etcd3Client, prefix_range_end

from .etcd_client import ETCD_ERRORS, RETRY_SECONDS
from .instance_info import InstanceInfo
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

ChangeKind = Literal["added", "removed"]
ChangeCallback = Callable[[ChangeKind, InstanceInfo], None]


class InstanceSet:
    """A live, read-only view of instances under one etcd prefix, kept current by a watch.

    `instances` maps instance_id -> InstanceInfo. Callbacks run on the event
    loop for each addition or removal. When etcd is unreachable the view keeps
    its last state; on reconnect it re-lists and reports the differences.
    Made by `Discovery.instance_set()`, which closes it on `Discovery.close()`.
    """

    def __init__(
        self,
        client: Etcd3Client,
        prefix: str,
        model: str | None,
        log_changes: bool = True,
        on_close: Callable[[InstanceSet], None] | None = None,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._model = model
        self._log_changes = log_changes
        self._on_close = on_close
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
        if self._on_close is not None:
            self._on_close(self)

    async def wait_for(
        self, predicate: Callable[[dict[str, InstanceInfo]], bool], timeout: float
    ) -> None:
        """Wait until `predicate(instances)` holds (e.g. `lambda d: len(d) >= 2`)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self._instances))

    async def _run(self) -> None:
        client = self._client
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
                await asyncio.sleep(RETRY_SECONDS)

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
