"""KV events: number them, keep the recent ones, publish them on JetStream in order.

`KvEventPublisher` is the worker's `KvEventSink`. Engines may call it from
their own thread: ids are assigned under a lock and the event loop is only
woken (`call_soon_threadsafe`); one publishing task sends events strictly in
id order. It also mirrors the set of resident blocks from the events it
numbers, per tier (`tandem.runtime.kv_tiers`: the engine's pool, and a KV block
manager's host memory and disk), so `events_since` can answer with a snapshot
consistent with a given event id, whatever the engine (torch, mocker, or SGLang's
translated events): a router that resyncs learns the host and disk blocks too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from typing import Protocol

from tandem.runtime.kv_tiers import DEVICE_TIER, TIERS
from tandem.runtime.pacing import WritePacer
from tandem.runtime.tasks import cancel_and_wait
from tandem.runtime.wire.kv_events_pb2 import BlocksRemoved, BlocksStored, KvEvent, StoredBlock

log = logging.getLogger(__name__)
# At most one burst of publishes (one NATS socket write) per this many seconds;
# routers see events at most this much later.
MIN_FLUSH_INTERVAL_S = 0.005
MIN_OUTBOX_SIZE = 10_000


class KvEventTransport(Protocol):
    async def publish_kv_event(self, event: KvEvent) -> None: ...


class KvEventPublisher:
    """Owns this worker's KV event ids, ring buffer, resident-block mirror and publishing task."""

    def __init__(
        self,
        instance_id: str,
        transport: KvEventTransport | None = None,
        ring_size: int = 10_000,
    ) -> None:
        if ring_size <= 0:
            raise ValueError("ring_size must be positive")
        self.instance_id = instance_id
        self._transport = transport
        self._lock = threading.Lock()
        self._ring: deque[KvEvent] = deque(maxlen=ring_size)
        # Events not yet handed to the transport. Bounded, so a long NATS outage
        # drops the oldest (readers see the gap and resync), but never below
        # what a few flush intervals produce, whatever the ring size.
        self._outbox: deque[KvEvent] = deque(maxlen=max(ring_size, MIN_OUTBOX_SIZE))
        self._next_id = 0
        # Resident blocks per tier: sequence hash -> (local hash, parent sequence hash).
        self._resident: dict[str, dict[int, tuple[int, int | None]]] = {DEVICE_TIER: {}}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._sending = False
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def next_event_id(self) -> int:
        return self._next_id

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start publishing from the running loop (events recorded before are sent too)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._wake.set()
        self._task = asyncio.create_task(self._publish_loop(), name="kv-event-publisher")

    async def stop(self) -> None:
        """Publish what is queued (for up to 5 s), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self.flush()
        await cancel_and_wait(self._task)
        self._task = None

    async def flush(self) -> None:
        """Wait until every event recorded so far was handed to the transport."""
        while self._task is not None and not self._task.done() and (self._outbox or self._sending):
            self._drained.clear()
            await self._drained.wait()

    # -- KvEventSink -------------------------------------------------------------

    def stored(
        self, parent_hash: int | None, blocks: list[tuple[int, int]], tier: str = DEVICE_TIER
    ) -> None:
        if not blocks:
            return
        stored = BlocksStored(
            blocks=[StoredBlock(block_hash=h, local_hash=lh) for h, lh in blocks], tier=tier
        )
        if parent_hash is not None:
            stored.parent_hash = parent_hash
        with self._lock:
            resident = self._resident.get(tier)
            if resident is None:
                resident = self._resident[tier] = {}
            parent = parent_hash
            for h, lh in blocks:
                resident[h] = (lh, parent)
                parent = h
            self._append(KvEvent(stored=stored))

    def removed(self, block_hashes: list[int], tier: str = DEVICE_TIER) -> None:
        if not block_hashes:
            return
        with self._lock:
            resident = self._resident.get(tier)
            if resident is not None:
                for h in block_hashes:
                    resident.pop(h, None)
            self._append(KvEvent(removed=BlocksRemoved(block_hashes=block_hashes, tier=tier)))

    def cleared(self) -> None:
        with self._lock:
            for resident in self._resident.values():
                resident.clear()
            event = KvEvent()
            event.cleared.SetInParent()
            self._append(event)

    # -- queries ---------------------------------------------------------------

    def events_since(self, from_event_id: int) -> tuple[list[KvEvent], bool, int]:
        """(events, is_snapshot, last_event_id) for a reader missing `from_event_id` onwards.

        The ring's events when it still holds `from_event_id`; otherwise a
        snapshot (AllCleared, then BlocksStored chains of every resident
        block, tier by tier, fastest first), each snapshot event carrying
        `last_event_id` as its id.
        `last_event_id` is the last id assigned. Before the first event it is
        0 with no events: nothing to apply, and the next event will be 0.
        """
        with self._lock:
            last = self._next_id - 1
            oldest = self._ring[0].event_id if self._ring else self._next_id
            if oldest <= from_event_id <= self._next_id:
                start = from_event_id - oldest
                return [self._ring[i] for i in range(start, len(self._ring))], False, max(last, 0)
            return self._snapshot(max(last, 0)), True, max(last, 0)

    def resident_blocks(self, tier: str = DEVICE_TIER) -> dict[int, tuple[int, int | None]]:
        """Blocks resident in `tier`: sequence hash -> (local hash, parent sequence hash)."""
        with self._lock:
            return dict(self._resident.get(tier, {}))

    # -- internals -------------------------------------------------------------

    def _append(self, event: KvEvent) -> None:
        """Number and keep `event` (lock held), then wake the publisher."""
        event.instance_id = self.instance_id
        event.event_id = self._next_id
        self._next_id += 1
        self._ring.append(event)
        self._outbox.append(event)
        if self._wake is None or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _snapshot(self, event_id: int) -> list[KvEvent]:
        cleared = KvEvent(instance_id=self.instance_id, event_id=event_id)
        cleared.cleared.SetInParent()
        events = [cleared]
        known = [t for t in TIERS if t in self._resident]
        for tier in known + sorted(set(self._resident) - set(known)):
            for stored in self._chains(tier, self._resident[tier]):
                events.append(
                    KvEvent(instance_id=self.instance_id, event_id=event_id, stored=stored)
                )
        return events

    @staticmethod
    def _chains(tier: str, resident: dict[int, tuple[int, int | None]]) -> list[BlocksStored]:
        """`resident` as BlocksStored chains: a block after its parent whenever the tier holds
        the parent. A chain whose first block's parent is elsewhere (another tier, or evicted)
        still names that parent, as the live event did."""
        children: dict[int | None, list[int]] = {}
        for h, (_, parent) in resident.items():
            children.setdefault(parent if parent in resident else None, []).append(h)
        out: list[BlocksStored] = []
        # Depth-first from each root: a chain continues through the first child;
        # other children start a new BlocksStored after their parent.
        stack: list[tuple[int | None, int]] = [
            (resident[h][1], h) for h in reversed(children.get(None, []))
        ]
        while stack:
            parent, h = stack.pop()
            stored = BlocksStored(tier=tier)
            if parent is not None:
                stored.parent_hash = parent
            while True:
                stored.blocks.append(StoredBlock(block_hash=h, local_hash=resident[h][0]))
                kids = children.get(h, [])
                stack.extend((h, k) for k in reversed(kids[1:]))
                if not kids:
                    break
                h = kids[0]
            out.append(stored)
        return out

    async def _publish_loop(self) -> None:
        assert self._wake is not None
        expected = 0
        pacer = WritePacer(MIN_FLUSH_INTERVAL_S)
        while True:
            await self._wake.wait()
            await pacer.wait()  # the events of several fast steps go out in one NATS write
            self._wake.clear()
            while self._outbox:
                self._sending = True
                event = self._outbox.popleft()
                if event.event_id != expected:
                    log.warning(
                        "kv events %d..%d dropped before publishing (outbox full)",
                        expected,
                        event.event_id - 1,
                        extra={"instance_id": self.instance_id},
                    )
                expected = event.event_id + 1
                if self._transport is not None:
                    try:
                        await self._transport.publish_kv_event(event)
                    except Exception as exc:  # NATS trouble must not stop the engine
                        log.warning(
                            "kv event %d not published: %s",
                            event.event_id,
                            exc,
                            extra={"instance_id": self.instance_id},
                        )
                self._sending = False
            pacer.flushed()
            self._drained.set()
