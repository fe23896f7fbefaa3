from __future__ import annotations

import asyncio
import threading

from tandem.runtime.wire.kv_events_pb2 import KvEvent
from tandem.worker.block_manager import BlockManager
from tandem.worker.kv_publisher import KvEventPublisher

from tests.support.kv_state import apply


class ListTransport:
    def __init__(self) -> None:
        self.events: list[KvEvent] = []

    async def publish_kv_event(self, event: KvEvent) -> None:
        self.events.append(event)


def test_events_are_numbered_from_zero_and_well_formed() -> None:
    pub = KvEventPublisher("w1")
    pub.stored(None, [(11, 1), (12, 2)])
    pub.stored(12, [(13, 3)])
    pub.removed([13])
    pub.cleared()
    events, is_snapshot, last = pub.events_since(0)
    assert not is_snapshot and last == 3
    assert [e.event_id for e in events] == [0, 1, 2, 3]
    assert {e.instance_id for e in events} == {"w1"}
    assert not events[0].stored.HasField("parent_hash")
    assert [(b.block_hash, b.local_hash) for b in events[0].stored.blocks] == [(11, 1), (12, 2)]
    assert events[1].stored.parent_hash == 12 and events[1].stored.tier == "hbm"
    assert list(events[2].removed.block_hashes) == [13]
    assert events[3].WhichOneof("data") == "cleared"


def test_events_since_returns_the_gap_or_nothing() -> None:
    pub = KvEventPublisher("w1", ring_size=8)
    for i in range(5):
        pub.stored(None, [(100 + i, i)])
    events, is_snapshot, last = pub.events_since(3)
    assert [e.event_id for e in events] == [3, 4] and not is_snapshot and last == 4
    assert pub.events_since(5) == ([], False, 4)


def test_snapshot_when_ring_lost_the_events_rebuilds_resident_blocks() -> None:
    pub = KvEventPublisher("w1", ring_size=3)
    bm = BlockManager(6, 2, pub)
    reference: dict[int, int | None] = {}
    # Two sequences sharing a prefix (a branch), then evictions.
    for tokens in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 7, 8], [9, 9, 9, 9], [5, 5, 5, 5]):
        table = bm.allocate_prompt(tokens)
        assert table is not None
        bm.mark_computed(table, tokens, len(tokens))
        bm.free(table)
    everything = pub._ring  # only the last 3 remain
    assert everything[0].event_id > 0
    events, is_snapshot, last = pub.events_since(0)
    assert is_snapshot and last == pub.next_event_id - 1
    assert events[0].WhichOneof("data") == "cleared"
    assert all(e.event_id == last for e in events)
    apply(events, reference)
    assert set(reference) == set(bm.resident_hashes())
    for h, parent in pub.resident_blocks().items():
        assert reference[h] == parent[1]


async def test_publishes_in_order_from_engine_threads() -> None:
    transport = ListTransport()
    pub = KvEventPublisher("w1", transport)
    pub.stored(None, [(1, 1)])  # recorded before start: still published
    pub.start()

    def engine_thread() -> None:
        for i in range(500):
            pub.stored(None, [(1000 + i, i)])

    threads = [threading.Thread(target=engine_thread) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        await asyncio.to_thread(t.join)
    await pub.flush()
    await pub.stop()
    assert [e.event_id for e in transport.events] == list(range(1001))


async def test_transport_failure_does_not_stop_publishing() -> None:
    class Flaky(ListTransport):
        async def publish_kv_event(self, event: KvEvent) -> None:
            if event.event_id == 1:
                raise ConnectionError("nats down")
            await super().publish_kv_event(event)

    transport = Flaky()
    pub = KvEventPublisher("w1", transport)
    pub.start()
    for i in range(3):
        pub.stored(None, [(i, i)])
    await pub.flush()
    await pub.stop()
    assert [e.event_id for e in transport.events] == [0, 2]


def test_events_carry_their_tier_and_the_snapshot_holds_every_tier() -> None:
    pub = KvEventPublisher("w1", ring_size=2)
    pub.stored(None, [(1, 11), (2, 12)])
    pub.stored(2, [(3, 13)], "host_dram")
    pub.stored(1, [(2, 12), (3, 13)], "host_dram")  # offloaded while still on the device
    pub.stored(3, [(4, 14)], "nvme_ssd")
    pub.removed([2])  # evicted from the device: the host copy stays
    pub.removed([4], "nvme_ssd")
    pub.stored(None, [(5, 15)], "nvme_ssd")
    live, _, _ = pub.events_since(pub.next_event_id - 2)
    assert live[0].removed.tier == "nvme_ssd" and live[1].stored.tier == "nvme_ssd"
    assert set(pub.resident_blocks()) == {1}
    assert pub.resident_blocks("host_dram") == {3: (13, 2), 2: (12, 1)}
    assert set(pub.resident_blocks("nvme_ssd")) == {5}

    events, is_snapshot, last = pub.events_since(0)
    assert is_snapshot and {e.event_id for e in events} == {last}
    assert events[0].WhichOneof("data") == "cleared"
    chains = [
        (
            e.stored.tier,
            e.stored.parent_hash if e.stored.HasField("parent_hash") else None,
            [(b.block_hash, b.local_hash) for b in e.stored.blocks],
        )
        for e in events[1:]
    ]
    assert chains == [  # fastest tier first; a chain keeps its first block's parent
        ("hbm", None, [(1, 11)]),
        ("host_dram", 1, [(2, 12), (3, 13)]),
        ("nvme_ssd", None, [(5, 15)]),
    ]

    pub.cleared()
    assert not any(pub.resident_blocks(t) for t in ("hbm", "host_dram", "nvme_ssd"))
    events, _, _ = pub.events_since(0)
    assert [e.WhichOneof("data") for e in events] == ["cleared"]


def test_recording_sink_keeps_device_events_as_before_and_every_tier_beside() -> None:
    from tandem.worker.kv_event_sink import RecordingSink

    sink = RecordingSink()
    sink.stored(None, [(1, 1)])
    sink.stored(1, [(2, 2)], "host_dram")
    sink.removed([2], "host_dram")
    sink.removed([1])
    sink.cleared()
    assert sink.events == [("stored", (None, [(1, 1)])), ("removed", [1]), ("cleared", None)]
    assert sink.tier_events == [
        ("stored", "hbm", (None, [(1, 1)])),
        ("stored", "host_dram", (1, [(2, 2)])),
        ("removed", "host_dram", [2]),
        ("removed", "hbm", [1]),
        ("cleared", "", None),
    ]
