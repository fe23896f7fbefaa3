"""Router replicas tell each other what they sent where (ActiveLoadUpdate over core NATS).

Each replica counts its own requests and, through this, everyone else's, so
two frontends do not both send the next burst to the same idle worker.
Fire-and-forget: a lost update is corrected by the workers' LoadMetrics and,
for a replica that died holding requests, by ActiveLoadManager's expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

from tandem.runtime import subjects
from tandem.runtime.wire.router_pb2 import ActiveLoadUpdate

from .active_load import ActiveLoadManager

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from tandem.runtime.messaging import Messaging

log = logging.getLogger(__name__)

Kind = ActiveLoadUpdate.Kind


class LoadSharing:
    """Owns this replica's router_id and its NATS subscription to the other replicas' updates."""

    def __init__(
        self, messaging: Messaging, load: ActiveLoadManager, router_id: str | None = None
    ) -> None:
        self.router_id = router_id or uuid.uuid4().hex
        self._messaging = messaging
        self._load = load
        self._subject = subjects.router_active_subject(messaging.namespace)
        self._subscription: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._subscription = await self._messaging.nc.subscribe(self._subject, cb=self._on_msg)

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task

    def publish(
        self,
        kind: int,
        request_id: str,
        instance_id: str,
        prefill_tokens: int = 0,
        decode_blocks: int = 0,
    ) -> None:
        """Send one update without waiting (route() must not block on NATS)."""
        update = ActiveLoadUpdate(
            router_id=self.router_id,
            request_id=request_id,
            instance_id=instance_id,
            kind=kind,  # type: ignore[arg-type]
            prefill_tokens=prefill_tokens,
            decode_blocks=decode_blocks,
        )
        task = asyncio.get_running_loop().create_task(
            self._messaging.nc.publish(self._subject, update.SerializeToString())
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_msg(self, msg: Msg) -> None:
        update = ActiveLoadUpdate()
        try:
            update.ParseFromString(msg.data)
        except Exception:  # noqa: BLE001 - a malformed peer message must not stop the subscription
            log.warning("ignoring malformed ActiveLoadUpdate")
            return
        if update.router_id == self.router_id:
            return
        if update.kind == Kind.KIND_ADD:
            self._load.add(
                update.request_id,
                update.instance_id,
                update.prefill_tokens,
                update.decode_blocks,
                is_local=False,
            )
        elif update.kind == Kind.KIND_PREFILL_DONE:
            self._load.prefill_done(update.request_id)
        elif update.kind == Kind.KIND_FREE:
            self._load.free(update.request_id)
