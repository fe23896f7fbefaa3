"""The prefill job queue on a real nats-server: depth, per-worker consumers, ack, nak, withdraw."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.messaging import Messaging
from tandem.runtime.prefill_queue import PrefillQueue


@pytest.fixture
async def queue(infra: LocalInfra, namespace: str) -> AsyncIterator[PrefillQueue]:
    messaging = Messaging(infra.nats_url, namespace)
    await messaging.connect()
    yield PrefillQueue(messaging)
    await messaging.close()


async def test_depth_counts_queued_and_running_jobs_until_acked(queue: PrefillQueue) -> None:
    assert await queue.depth("m") == 0
    await queue.publish("m", "p1", b"a", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    await queue.publish("m", "p2", b"b")
    await queue.publish("other.model", "p1", b"c")
    assert await queue.depth("m") == 2
    consumer = await queue.consumer("m", "p1")
    (msg,) = await consumer.fetch(10, timeout=2)
    assert msg.data == b"a" and msg.headers and msg.headers["traceparent"].startswith("00-1111")
    assert await queue.depth("m") == 2  # taken, not acked: still in the queue
    await msg.ack_sync()
    assert await queue.depth("m") == 1  # p2's job: nobody else's consumer took it
    await consumer.close()


async def test_a_nak_delivers_the_job_again(queue: PrefillQueue) -> None:
    await queue.publish("m", "p1", b"job")
    consumer = await queue.consumer("m", "p1")
    (first,) = await consumer.fetch(1, timeout=2)
    await first.nak()
    (again,) = await consumer.fetch(1, timeout=5)
    assert again.data == b"job" and again.metadata.num_delivered == 2
    await again.ack_sync()
    assert await consumer.fetch(1, timeout=0.5) == []
    await consumer.close()


async def test_a_withdrawn_job_is_never_delivered(queue: PrefillQueue) -> None:
    job = await queue.publish("m", "p1", b"gone")
    await queue.publish("m", "p1", b"kept")
    assert await queue.withdraw(job)
    assert not await queue.withdraw(job)  # already gone
    consumer = await queue.consumer("m", "p1")
    msgs = await consumer.fetch(10, timeout=2)
    assert [m.data for m in msgs] == [b"kept"]
    await consumer.close()


async def test_depths_per_worker_and_a_taken_job_withdrawn(queue: PrefillQueue) -> None:
    # What moving a dead prefill worker's job needs: its depth per worker, and a job it
    # pulled (never acked) can be withdrawn, so its consumer never delivers it again.
    taken = await queue.publish("m.v1", "p1", b"taken")
    await queue.publish("m.v1", "p2", b"x")
    await queue.publish("m.v1", "p2", b"y")
    await queue.publish("other", "p1", b"z")
    assert await queue.depths("m.v1") == {"p1": 1, "p2": 2}
    consumer = await queue.consumer("m.v1", "p1")
    (msg,) = await consumer.fetch(1, timeout=2)
    assert msg.data == b"taken"
    assert await queue.withdraw(taken)
    assert await queue.depths("m.v1") == {"p2": 2}
    await msg.nak()  # what a worker that comes back does with it: nothing is left to deliver
    assert await consumer.fetch(1, timeout=0.5) == []
    await consumer.close()
