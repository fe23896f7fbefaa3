"""Keeps a RadixIndex in step with every worker's KV events.

Events arrive from the JetStream KV stream (all workers, in stream order).
Per worker the follower knows the last event_id applied. The next one is
applied; an older one is a duplicate and skipped; a newer one means events
were missed, so the follower buffers that worker's events and asks the
worker for the missing range with Worker.KvEventsSince (the worker answers
with the events, or with a snapshot of its blocks when its ring buffer no
longer reaches back), applies the answer, then the buffer. Other workers'
events keep flowing meanwhile.

A follower that starts late replays the stream from its beginning and
reports `ready` once it has applied everything stored when it subscribed;
workers whose history the stream no longer holds show up as a gap from 0
and are rebuilt from their snapshot, and live workers with no event left in
the stream (quiet for longer than it keeps events) are asked for theirs.
Only workers in the router's etcd view are followed (`is_member`); one that
joins later is rebuilt the same way.
Every tier's blocks are indexed (`hbm`, or '' from a worker that predates
tiers, as the device; `host_dram`, `nvme_ssd`): a block in host memory or on
disk is copied back instead of computed. A tier this router does not know (a
newer worker's) is skipped.

Events are decoded as KvEventColumns (the same bytes as a KvEvent, with a
stored event's block hashes in one column), so applying one costs protobuf's
parse and a dict operation per block, not a Python object per block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import grpc
from tandem.runtime import subjects
from tandem.runtime.grpc_util import create_channel
from tandem.runtime.kv_tiers import DEVICE_TIER
from tandem.runtime.messaging import KV_STREAM_MAX_MSGS
from tandem.runtime.tasks import cancel_and_wait
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc
from tandem.runtime.wire.kv_events_pb2 import KvEvent, KvEventColumns

from .radix_index import LOWER_TIERS, RadixIndex

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription
    from tandem.runtime.messaging import Messaging

log = logging.getLogger(__name__)

DEVICE_TIERS = frozenset(("", DEVICE_TIER))
RECOVERY_RETRY_SECONDS = 0.5
RECOVERY_MAX_RETRY_SECONDS = 8.0
RECOVERY_TIMEOUT_SECONDS = 10.0
MAX_SKIPPED_WORKERS = 4096
"""Workers remembered as having published before they joined our view; beyond, forgotten
(a worker forgotten there is still rebuilt at its next event, as a gap from 0)."""
REPLAY_MAX_EVENTS = KV_STREAM_MAX_MSGS
"""Longer streams (created with other limits) are not replayed at start: live workers are
asked for their state instead."""


class KvEventFollower:
    """Owns the per-worker event_id bookkeeping, gap recovery and the stream subscription."""

    def __init__(
        self,
        index: RadixIndex,
        endpoint_of: Callable[[str], str | None],
        on_applied: Callable[[int], None] | None = None,
        on_gap: Callable[[str], None] | None = None,
        is_member: Callable[[str], bool] | None = None,
        replay_max_events: int = REPLAY_MAX_EVENTS,
    ) -> None:
        self.index = index
        self.replay_max_events = replay_max_events
        self._endpoint_of = endpoint_of
        self._is_member = is_member
        self._on_applied = on_applied
        self._on_gap = on_gap
        self._last_id: dict[str, int] = {}
        self._pending: dict[str, list[KvEventColumns]] = {}  # worker -> buffered during recovery
        self._recovering: dict[str, asyncio.Task[None]] = {}
        self._departed: set[str] = set()
        # Workers whose events arrived before they were in our etcd view (and were dropped).
        self._skipped: set[str] = set()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._subscription: Subscription | None = None
        self._ready = asyncio.Event()
        self._target_seq = 0
        self.last_stream_seq = 0
        self.num_applied = 0
        self.num_gaps = 0

    # -- state ------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    def last_event_id(self, worker: str) -> int | None:
        return self._last_id.get(worker)

    def is_recovering(self, worker: str) -> bool:
        return worker in self._recovering

    # -- stream -----------------------------------------------------------------

    async def start(
        self, messaging: Messaging, live_workers: Iterable[str] = (), wait_seconds: float = 60.0
    ) -> None:
        """Rebuild the index, then follow the stream; returns once the index is current.

        A stream of at most `replay_max_events` is replayed from its start. A
        longer one (replaying it would take a while: ~40k events/s through
        nats-py) is joined at its end, and each live worker's state is fetched
        with KvEventsSince(0) instead; events arriving meanwhile are buffered.
        """
        live_workers = list(live_workers)
        await messaging.ensure_kv_stream()
        info = await messaging.js.stream_info(subjects.kv_stream(messaging.namespace))
        last_seq = info.state.last_seq
        if info.state.messages <= self.replay_max_events:
            self._target_seq = last_seq if info.state.messages else 0
            if self._target_seq == 0:
                self._ready.set()
            self._subscription = await messaging.subscribe_kv_event_bytes(self._on_stream_event)
            how = "stream replay"
        else:
            self._ready.set()
            self._subscription = await messaging.subscribe_kv_event_bytes(
                self._on_stream_event, start_sequence=last_seq + 1
            )
            for worker in live_workers:
                self._pending[worker] = []
                self._start_recovery(worker, 0, is_gap=False)
            how = f"worker snapshots (stream holds {info.state.messages} events)"
        try:
            async with asyncio.timeout(wait_seconds):
                await self._ready.wait()
                # A live worker the replay never heard from published nothing the stream still
                # holds (it was quiet for longer than the stream keeps events): ask it.
                for worker in live_workers:
                    if worker not in self._last_id and worker not in self._recovering:
                        self._pending[worker] = []
                        self._start_recovery(worker, 0, is_gap=False)
                while self._recovering:
                    await asyncio.wait(list(self._recovering.values()))
        except TimeoutError:
            log.warning(
                "KV index rebuild not done after %.0fs (stream at seq %d of %d, %d workers "
                "recovering); routing anyway",
                wait_seconds,
                self.last_stream_seq,
                self._target_seq,
                len(self._recovering),
            )
            self._ready.set()
        log.info(
            "KV index rebuilt from %s: %d events, %d blocks, %d workers",
            how,
            self.num_applied,
            self.index.num_blocks,
            len(self.index.workers),
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        for task in list(self._recovering.values()):
            await cancel_and_wait(task)
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def _on_stream_event(self, data: bytes, stream_seq: int) -> None:
        self.last_stream_seq = stream_seq
        self._handle(KvEventColumns.FromString(data))
        if not self._ready.is_set() and stream_seq >= self._target_seq:
            self._ready.set()

    # -- events -----------------------------------------------------------------

    def handle(self, event: KvEvent | KvEventColumns) -> None:
        """Apply `event` in its worker's order, or buffer it and recover a gap."""
        self._handle(as_columns(event))

    def handle_bytes(self, data: bytes) -> None:
        """`handle` for a serialized KvEvent, as the stream delivers it."""
        self._handle(KvEventColumns.FromString(data))

    def _handle(self, event: KvEventColumns) -> None:
        worker = event.instance_id
        if worker in self._departed:
            return
        if self._is_member is not None and not self._is_member(worker):
            # Not (yet) in our etcd view: another model's worker, or one still registering.
            # Once it is a member it is rebuilt from event 0 (`worker_added`), not drifted.
            self._last_id.pop(worker, None)
            if len(self._skipped) >= MAX_SKIPPED_WORKERS:  # other models' workers, mostly
                self._skipped.clear()
            self._skipped.add(worker)
            return
        if worker in self._recovering:
            self._pending[worker].append(event)
            return
        last = self._last_id.get(worker, -1)
        event_id = event.event_id
        if event_id <= last:
            return  # duplicate (redelivery, or already covered by a recovery)
        if event_id == last + 1:
            self._apply(worker, event)
            self._last_id[worker] = event_id
            return
        self._pending[worker] = [event]
        self._start_recovery(worker, last + 1)

    def apply_all(self, events: Iterable[KvEvent | KvEventColumns]) -> None:
        for event in events:
            self.handle(event)

    def _apply(self, worker: str, event: KvEventColumns) -> None:
        kind = event.WhichOneof("data")
        if kind == "stored":
            stored = event.stored
            tier = stored.tier
            if tier in DEVICE_TIERS:
                # A slice reads the column into a list faster than list() does.
                self.index.store(worker, stored.blocks.block_hash[:])
            elif tier in LOWER_TIERS:
                self.index.store(worker, stored.blocks.block_hash[:], tier)
        elif kind == "removed":
            removed = event.removed
            tier = removed.tier
            if tier in DEVICE_TIERS:
                self.index.remove(worker, removed.block_hashes)
            elif tier in LOWER_TIERS:
                self.index.remove(worker, removed.block_hashes, tier)
        elif kind == "cleared":
            self.index.clear(worker)
        self.num_applied += 1
        if self._on_applied is not None:
            self._on_applied(1)

    # -- workers ----------------------------------------------------------------

    def worker_added(self, worker: str) -> None:
        """The worker (re)joined etcd: follow it from its next event (a restarted worker that
        kept its instance id starts again at event 0). Events it published before it
        registered were dropped: they are fetched from it now, since a worker that starts
        with blocks (a disk tier reloaded) may publish nothing more for a long time."""
        if worker in self._departed:
            self._departed.discard(worker)
            self._last_id.pop(worker, None)
        if worker in self._skipped:
            self._skipped.discard(worker)
            if worker not in self._recovering and worker not in self._last_id:
                self._pending[worker] = []
                self._start_recovery(worker, 0, is_gap=False)

    def worker_removed(self, worker: str) -> None:
        """The worker left etcd: drop its blocks and ignore its stragglers."""
        self._departed.add(worker)
        self._forget(worker)
        channel = self._channels.pop(worker, None)
        if channel is not None:
            asyncio.get_running_loop().create_task(channel.close())

    def drop_unknown_workers(self, alive: set[str]) -> None:
        """After replay: forget workers not alive now; if one shows up, it is rebuilt from id 0."""
        for worker in [w for w in self.index.workers if w not in alive]:
            self._forget(worker)
        for worker in [w for w in self._last_id if w not in alive]:
            self._last_id.pop(worker, None)

    def _forget(self, worker: str) -> None:
        self._skipped.discard(worker)
        task = self._recovering.pop(worker, None)
        if task is not None:
            task.cancel()
        self._pending.pop(worker, None)
        self._last_id.pop(worker, None)
        self.index.remove_worker(worker)

    # -- gap recovery -------------------------------------------------------------

    def _start_recovery(self, worker: str, from_event_id: int, *, is_gap: bool = True) -> None:
        if is_gap:
            self.num_gaps += 1
            if self._on_gap is not None:
                self._on_gap(worker)
            log.info(
                "KV event gap: fetching events from %d",
                from_event_id,
                extra={"instance_id": worker},
            )
        self._recovering[worker] = asyncio.get_running_loop().create_task(
            self._recover(worker, from_event_id), name=f"kv-recover {worker}"
        )

    async def _recover(self, worker: str, from_event_id: int) -> None:
        delay = RECOVERY_RETRY_SECONDS
        while True:
            try:
                response = await self._fetch(worker, from_event_id)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # unreachable for now: retry until it leaves etcd
                log.warning(
                    "KvEventsSince failed, retrying in %.1fs: %s",
                    delay,
                    exc,
                    extra={"instance_id": worker},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECOVERY_MAX_RETRY_SECONDS)
        if response.is_snapshot:
            self.index.clear(worker)
        for event in response.events:
            self._apply(worker, as_columns(event))
        if response.events or response.is_snapshot:
            self._last_id[worker] = max(response.last_event_id, self._last_id.get(worker, -1))
        last = self._last_id.get(worker, -1)
        log.info(
            "KV events fetched from the worker: %d events%s, now at %d",
            len(response.events),
            " (snapshot)" if response.is_snapshot else "",
            last,
            extra={"instance_id": worker},
        )
        del self._recovering[worker]
        pending = self._pending.pop(worker, [])
        if pending and pending[0].event_id > last + 1 and last < from_event_id:
            # The worker cannot fill the gap (it says it never got that far): take the
            # events as they are rather than asking again forever.
            log.warning(
                "KV event gap the worker cannot fill; continuing from %d",
                pending[0].event_id,
                extra={"instance_id": worker},
            )
            self._last_id[worker] = pending[0].event_id - 1
        for event in pending:
            self._handle(event)

    async def _fetch(self, worker: str, from_event_id: int) -> worker_pb2.KvEventsSinceResponse:
        endpoint = self._endpoint_of(worker)
        if endpoint is None:
            raise LookupError("worker not (yet) in etcd")
        channel = self._channels.get(worker)
        if channel is None:
            channel = self._channels[worker] = create_channel(endpoint)
        stub = worker_pb2_grpc.WorkerStub(channel)
        return await stub.KvEventsSince(
            worker_pb2.KvEventsSinceRequest(from_event_id=from_event_id),
            timeout=RECOVERY_TIMEOUT_SECONDS,
        )


def as_columns(event: KvEvent | KvEventColumns) -> KvEventColumns:
    """The follower's view of an event (the same bytes, decoded as KvEventColumns)."""
    if isinstance(event, KvEventColumns):
        return event
    return KvEventColumns.FromString(event.SerializeToString())
