"""One active planner per model: leader election over the planner's etcd lease.

The leader holds `tandem/{ns}/planner/leader/{model}` (its instance id, bound
to its lease); a key created in a transaction only if absent, so one planner
holds it at a time. Standbys watch the key and campaign again when it goes:
at once when the leader stops cleanly (its lease is revoked), within the
lease TTL when it dies. Every target the leader writes is a transaction on
"the leader key still holds my id", so a planner that lost the key (its lease
expired while etcd was away, and a standby took over) can never write a
target again, even before it noticed: two planners never write conflicting
targets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from etcd3aio import Etcd3Client
from tandem.runtime.etcd_client import ETCD_ERRORS, RETRY_SECONDS
from tandem.runtime.tasks import cancel_and_wait

log = logging.getLogger("tandem.planner.election")


class LeaderElection:
    """Owns this planner's campaign for one leader key and the watch that notices its loss."""

    def __init__(
        self,
        client: Etcd3Client,
        key: str,
        candidate_id: str,
        lease_id: Callable[[], int | None],
        recheck_seconds: float = 1.0,
    ) -> None:
        self._client = client
        self._key = key
        self._id = candidate_id
        self._lease_id = lease_id
        self._recheck = recheck_seconds
        self.lost = asyncio.Event()  # set when a held leadership ends
        self._leading = False
        self._watch: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._leading

    async def campaign(self) -> None:
        """Return once this planner holds the key (waits, re-trying, as long as it takes)."""
        while True:
            try:
                leader, revision = await self._try_acquire()
                if leader == self._id:
                    self._leading = True
                    self.lost.clear()
                    self._watch = asyncio.create_task(self._watch_loss(revision), name="leader")
                    log.info("became leader key=%s instance_id=%s", self._key, self._id)
                    return
                log.info("standing by: leader is %s key=%s", leader, self._key)
                await self._wait_vacant(revision)
            except ETCD_ERRORS as exc:
                log.warning("leader campaign interrupted, retrying: %s", exc)
                await asyncio.sleep(RETRY_SECONDS)

    async def _try_acquire(self) -> tuple[str, int]:
        """(the leader's id after trying, revision): ours if the key was vacant."""
        lease = self._lease_id()
        kv = self._client.kv
        assert kv is not None  # connected by the owner
        if lease is None:
            resp = await kv.get(self._key, timeout=5)
            holder = resp.kvs[0].value.decode() if resp.kvs else ""
            return holder, resp.header.revision
        txn = await kv.txn(
            compare=[kv.txn_compare_create_revision(self._key, 0)],
            success=[kv.txn_op_put(self._key, self._id, lease=lease)],
            failure=[kv.txn_op_get(self._key)],
            timeout=5,
        )
        if txn.succeeded:
            return self._id, txn.header.revision
        kvs = txn.responses[0].response_range.kvs
        return (kvs[0].value.decode() if kvs else ""), txn.header.revision

    async def _wait_vacant(self, revision: int) -> None:
        """Until the key is deleted after `revision` (or `recheck_seconds` pass: try again anyway)."""
        watch = self._client.watch
        assert watch is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._recheck):
                async for resp in watch.watch(self._key, start_revision=revision + 1):
                    if resp.canceled or any(e.type != 0 for e in resp.events):  # 0 = PUT
                        return

    async def _watch_loss(self, revision: int) -> None:
        watch = self._client.watch
        assert watch is not None
        while self._leading:
            try:
                async for resp in watch.watch(self._key, start_revision=revision + 1):
                    for event in resp.events:
                        revision = max(revision, event.kv.mod_revision)
                        if event.type != 0 or event.kv.value.decode() != self._id:
                            self._lose("the leader key was deleted or taken")
                            return
                    if resp.canceled:
                        break
            except ETCD_ERRORS as exc:
                log.debug("leader watch interrupted: %s", exc)
                await asyncio.sleep(RETRY_SECONDS)

    def _lose(self, why: str) -> None:
        if self._leading:
            self._leading = False
            self.lost.set()
            log.warning("lost leadership key=%s: %s", self._key, why)

    async def put_if_leader(self, key: str, value: str) -> bool:
        """Write `key` only while this planner holds the leader key (one transaction).

        False (and leadership marked lost) when it does not. Raises ETCD_ERRORS
        when etcd cannot be reached: then nobody knows, and nothing was written.
        """
        if not self._leading:
            return False
        kv = self._client.kv
        assert kv is not None
        txn = await kv.txn(
            compare=[kv.txn_compare_value(self._key, self._id)],
            success=[kv.txn_op_put(key, value)],
            timeout=5,
        )
        if not txn.succeeded:
            self._lose("a target write found another leader")
        return bool(txn.succeeded)

    async def resign(self) -> None:
        """Give the key up now (a clean stop), so a standby need not wait for the lease."""
        was_leading, self._leading = self._leading, False
        await cancel_and_wait(self._watch)
        self._watch = None
        if not was_leading or self._client.kv is None:
            return
        kv = self._client.kv
        with contextlib.suppress(*ETCD_ERRORS):
            await kv.txn(
                compare=[kv.txn_compare_value(self._key, self._id)],
                success=[kv.txn_op_delete(self._key)],
                timeout=2,
            )
