from __future__ import annotations

import asyncio
import random

from tandem.router.kv_event_follower import KvEventFollower, as_columns
from tandem.router.radix_index import RadixIndex
from tandem.runtime.wire import kv_events_pb2 as kv
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc
from tandem.worker.kv_publisher import KvEventPublisher


def stored(worker: str, event_id: int, hashes: list[int], parent: int | None = None) -> kv.KvEvent:
    ev = kv.KvEvent(instance_id=worker, event_id=event_id)
    ev.stored.blocks.extend(kv.StoredBlock(block_hash=h, local_hash=h) for h in hashes)
    if parent is not None:
        ev.stored.parent_hash = parent
    return ev


def removed(worker: str, event_id: int, hashes: list[int]) -> kv.KvEvent:
    ev = kv.KvEvent(instance_id=worker, event_id=event_id)
    ev.removed.block_hashes.extend(hashes)
    return ev


def cleared(worker: str, event_id: int) -> kv.KvEvent:
    ev = kv.KvEvent(instance_id=worker, event_id=event_id)
    ev.cleared.SetInParent()
    return ev


class FakeWorker(worker_pb2_grpc.WorkerServicer):
    """Answers KvEventsSince from a full event log, or with a snapshot when asked to."""

    def __init__(self, log: list[kv.KvEvent], snapshot: list[kv.KvEvent] | None = None) -> None:
        self.log = log
        self.snapshot = snapshot
        self.requests: list[int] = []

    async def KvEventsSince(self, request, context):  # noqa: N802 - gRPC method name
        self.requests.append(request.from_event_id)
        if self.snapshot is not None:
            return worker_pb2.KvEventsSinceResponse(
                events=self.snapshot, is_snapshot=True, last_event_id=self.log[-1].event_id
            )
        events = [e for e in self.log if e.event_id >= request.from_event_id]
        return worker_pb2.KvEventsSinceResponse(events=events, last_event_id=self.log[-1].event_id)


async def wait_recovered(follower: KvEventFollower, worker: str) -> None:
    async with asyncio.timeout(10):
        while follower.is_recovering(worker):  # noqa: ASYNC110 - state owned by the code under test
            await asyncio.sleep(0.01)


async def test_in_order_events_apply_and_duplicates_are_skipped():
    index = RadixIndex()
    follower = KvEventFollower(index, endpoint_of=lambda w: None)
    follower.apply_all(
        [stored("w1", 0, [1, 2]), stored("w1", 1, [3], parent=2), stored("w1", 1, [99])]
    )
    assert index.overlaps([1, 2, 3]) == {"w1": 3}
    assert index.num_blocks == 3
    follower.apply_all([removed("w1", 2, [3]), cleared("w2", 0), stored("w2", 1, [1])])
    assert index.overlaps([1, 2, 3]) == {"w1": 2, "w2": 1}
    follower.handle(cleared("w1", 3))
    assert index.overlaps([1, 2, 3]) == {"w2": 1}
    assert follower.last_event_id("w1") == 3
    assert follower.num_applied == 6


async def test_gap_fetches_missing_events(servers):
    log = [
        stored("w1", 0, [1]),
        stored("w1", 1, [2]),
        removed("w1", 2, [1]),
        stored("w1", 3, [1, 5]),
    ]
    worker = FakeWorker(log)
    endpoint = await servers(worker)
    index = RadixIndex()
    follower = KvEventFollower(index, endpoint_of=lambda w: endpoint)
    follower.handle(log[0])
    follower.handle(log[3])  # 1 and 2 were lost
    assert follower.is_recovering("w1")
    follower.handle(stored("w1", 4, [6]))  # buffered during recovery, applied after
    await wait_recovered(follower, "w1")
    assert worker.requests == [1]
    assert index.worker_blocks("w1") == {1, 2, 5, 6}
    assert follower.last_event_id("w1") == 4
    assert follower.num_gaps == 1


async def test_gap_beyond_ring_buffer_rebuilds_from_snapshot(servers):
    log = [stored("w1", i, [100 + i]) for i in range(10)]
    snapshot = [cleared("w1", 0), stored("w1", 0, [7, 8, 9])]
    endpoint = await servers(FakeWorker(log, snapshot))
    index = RadixIndex()
    follower = KvEventFollower(index, endpoint_of=lambda w: endpoint)
    follower.handle(stored("w1", 0, [42]))
    follower.handle(log[9])  # starts late / stream trimmed
    await wait_recovered(follower, "w1")
    assert index.worker_blocks("w1") == {7, 8, 9}  # 42 went with the snapshot's AllCleared
    assert follower.last_event_id("w1") == 9
    follower.handle(stored("w1", 10, [11]))
    assert 11 in index.worker_blocks("w1")


async def test_first_event_not_zero_is_a_gap_from_zero(servers):
    log = [stored("w1", 0, [1]), stored("w1", 1, [2])]
    worker = FakeWorker(log)
    endpoint = await servers(worker)
    follower = KvEventFollower(RadixIndex(), endpoint_of=lambda w: endpoint)
    follower.handle(log[1])
    await wait_recovered(follower, "w1")
    assert worker.requests == [0]
    assert follower.index.overlaps([1, 2]) == {"w1": 2}


async def test_worker_removal_drops_blocks_and_ignores_stragglers():
    index = RadixIndex()
    follower = KvEventFollower(index, endpoint_of=lambda w: None)
    follower.apply_all([stored("w1", 0, [1, 2]), stored("w2", 0, [1])])
    follower.worker_removed("w1")
    follower.handle(stored("w1", 1, [3]))
    assert index.overlaps([1, 2]) == {"w2": 1}
    assert "w1" not in index.workers


async def test_unknown_workers_after_replay_are_rebuilt_when_they_return(servers):
    log = [stored("w9", 0, [1]), stored("w9", 1, [2])]
    worker = FakeWorker(log, snapshot=[cleared("w9", 0), stored("w9", 0, [1, 2, 3])])
    endpoint = await servers(worker)
    index = RadixIndex()
    follower = KvEventFollower(index, endpoint_of=lambda w: endpoint)
    follower.apply_all(log)
    follower.drop_unknown_workers(alive=set())
    assert index.num_blocks == 0
    follower.handle(stored("w9", 2, [4]))  # it was alive after all: rebuilt, not drifted
    await wait_recovered(follower, "w9")
    assert index.worker_blocks("w9") == {1, 2, 3, 4}


def in_tier(event: kv.KvEvent, tier: str) -> kv.KvEvent:
    getattr(event, event.WhichOneof("data")).tier = tier
    return event


async def test_host_and_disk_events_are_indexed_in_their_tier():
    index = RadixIndex()
    follower = KvEventFollower(index, endpoint_of=lambda w: None)
    follower.apply_all(
        [
            stored("w1", 0, [1]),
            in_tier(stored("w1", 1, [1, 2, 3]), "host_dram"),
            in_tier(stored("w1", 2, [3, 4], parent=2), "nvme_ssd"),
            removed("w1", 3, [1]),  # no tier: a worker that predates tiers means the device
            in_tier(stored("w1", 4, [9]), "remote_pool"),  # a tier this router does not know
        ]
    )
    assert index.tier_overlaps([1, 2, 3, 4, 5]) == ({}, {"w1": 3}, {"w1": 1})
    follower.handle(in_tier(removed("w1", 5, [2]), "host_dram"))
    assert index.tier_overlaps([1, 2]) == ({}, {"w1": 1}, {})
    assert follower.last_event_id("w1") == 5 and follower.num_applied == 6
    follower.handle(cleared("w1", 6))  # every tier
    assert index.tier_overlaps([1, 2, 3, 4]) == ({}, {}, {})


async def test_a_snapshot_rebuilds_every_tier(servers):
    """A worker's snapshot (its publisher's, as KvEventsSince sends it) carries every tier."""
    pub = KvEventPublisher("w1", ring_size=2)
    pub.stored(None, [(1, 1), (2, 2)])
    pub.stored(2, [(3, 3)], "host_dram")
    pub.stored(3, [(4, 4)], "nvme_ssd")
    pub.stored(None, [(2, 2)], "host_dram")  # a block on the device and in host memory
    pub.removed([2])
    snapshot, is_snapshot, last = pub.events_since(0)
    assert is_snapshot
    log = [stored("w1", i, [100 + i]) for i in range(last + 1)]
    endpoint = await servers(FakeWorker(log, snapshot))
    index = RadixIndex()
    follower = KvEventFollower(index, endpoint_of=lambda w: endpoint)
    follower.handle(stored("w1", 0, [42]))
    follower.handle(log[last])
    await wait_recovered(follower, "w1")
    assert index.worker_blocks("w1") == {1}
    assert index.worker_blocks("w1", "host_dram") == {2, 3}
    assert index.worker_blocks("w1", "nvme_ssd") == {4}
    assert index.tier_overlaps([1, 2, 3, 4]) == ({"w1": 1}, {"w1": 2}, {"w1": 1})


async def test_only_members_are_followed_and_a_late_member_is_rebuilt(servers):
    log = [stored("w1", 0, [1]), stored("w1", 1, [2]), stored("w1", 2, [3])]
    worker = FakeWorker(log)
    endpoint = await servers(worker)
    members: set[str] = set()
    index = RadixIndex()
    follower = KvEventFollower(
        index, endpoint_of=lambda w: endpoint, is_member=members.__contains__
    )
    follower.apply_all(log[:2])  # e.g. another model's worker, or one still registering
    assert index.num_blocks == 0
    members.add("w1")
    follower.handle(log[2])
    await wait_recovered(follower, "w1")
    assert worker.requests == [0]
    assert index.overlaps([1, 2, 3]) == {"w1": 3}


async def test_a_member_that_published_before_joining_is_fetched_without_a_new_event(servers):
    # A worker that starts with blocks (its disk tier reloaded) publishes them before it
    # registers, then may publish nothing for a long time: joining is what fetches them.
    log = [stored("w1", 0, [1, 2]), stored("w1", 1, [3])]
    worker = FakeWorker(log)
    endpoint = await servers(worker)
    members: set[str] = set()
    index = RadixIndex()
    follower = KvEventFollower(
        index, endpoint_of=lambda w: endpoint, is_member=members.__contains__
    )
    follower.apply_all(log)
    assert index.num_blocks == 0
    members.add("w1")
    follower.worker_added("w1")
    await wait_recovered(follower, "w1")
    assert worker.requests == [0]
    assert index.overlaps([1, 2, 3]) == {"w1": 3}
    follower.worker_added("w1")  # already followed: nothing fetched again
    assert not follower.is_recovering("w1") and worker.requests == [0]


async def test_a_gap_the_worker_cannot_fill_does_not_loop(servers):
    log = [stored("w1", 0, [1]), stored("w1", 1, [2])]
    worker = FakeWorker(log)
    endpoint = await servers(worker)
    follower = KvEventFollower(RadixIndex(), endpoint_of=lambda w: endpoint)
    follower.apply_all(log)
    follower.handle(stored("w1", 50, [3]))  # e.g. a bogus or misnumbered event
    await wait_recovered(follower, "w1")
    assert worker.requests == [2]
    assert follower.last_event_id("w1") == 50
    assert follower.index.overlaps([1, 2, 3]) == {"w1": 3}


async def test_a_worker_restarted_under_the_same_id_is_followed_again():
    index = RadixIndex()
    follower = KvEventFollower(index, endpoint_of=lambda w: None)
    follower.apply_all([stored("w1", 0, [1]), stored("w1", 1, [2])])
    follower.worker_removed("w1")
    follower.worker_added("w1")
    follower.apply_all([stored("w1", 0, [7]), stored("w1", 1, [8])])  # ids start again at 0
    assert index.worker_blocks("w1") == {7, 8}


async def test_serialized_events_apply_as_their_messages_do():
    """The stream path decodes KvEventColumns; every hash, 0 and 2**64-1 included, lands."""
    events = [
        stored("w1", 0, [0, 5, 2**64 - 1], parent=0),
        stored("w1", 1, [7, 0]),  # a duplicate of hash 0 and a new block
        stored("w2", 0, [5]),
        removed("w1", 2, [5, 0]),
        stored("w2", 1, []),
        cleared("w2", 2),
        stored("w2", 3, [0]),
    ]
    events[0].stored.blocks[1].local_hash = 0  # a zero local hash must not shift the columns
    by_message, by_bytes = RadixIndex(), RadixIndex()
    follower = KvEventFollower(by_message, endpoint_of=lambda w: None)
    follower.apply_all(events)
    from_bytes = KvEventFollower(by_bytes, endpoint_of=lambda w: None)
    for ev in events:
        from_bytes.handle_bytes(ev.SerializeToString())
    for index in (by_message, by_bytes):
        assert index.worker_blocks("w1") == {2**64 - 1, 7}
        assert index.worker_blocks("w2") == {0}
    assert from_bytes.num_applied == follower.num_applied == len(events)
    assert from_bytes.last_event_id("w2") == 3


def test_columns_view_reads_every_stored_block_in_order():
    rng = random.Random(3)
    for n in (0, 1, 16, 200):
        hashes = [rng.choice([0, 1, 2**64 - 1, rng.getrandbits(64)]) for _ in range(n)]
        locals_ = [rng.choice([0, rng.getrandbits(64)]) for _ in range(n)]
        ev = kv.KvEvent(instance_id="w", event_id=9)
        ev.stored.tier = "hbm"
        ev.stored.blocks.extend(
            kv.StoredBlock(block_hash=h, local_hash=lh)
            for h, lh in zip(hashes, locals_, strict=True)
        )
        view = as_columns(ev)
        assert view.WhichOneof("data") == "stored"
        assert list(view.stored.blocks.block_hash) == hashes
        assert list(view.stored.blocks.local_hash) == locals_
        assert (view.instance_id, view.event_id, view.stored.tier) == ("w", 9, "hbm")
