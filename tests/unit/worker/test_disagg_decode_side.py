"""The decode side: a job whose prefill worker left moves to a live one, once; bounded waits.

Fakes for the engine, the queue and the etcd view; the transfer gate is the
real `KvReceiver`, so "the blocks receive exactly one transfer" is checked on
the gate that enforces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.instance_set import ChangeCallback, InstanceSet
from tandem.runtime.prefill_queue import PublishedJob
from tandem.runtime.wire import disagg_pb2, worker_pb2
from tandem.worker.disagg.decode_side import DecodeCoordinator
from tandem.worker.disagg.engine_hooks import ParkedRequest
from tandem.worker.disagg.prefill_pool import PrefillPool
from tandem.worker.engine import EngineRequest, OutputListener, SamplingConfig, TokenLogprob
from tandem.worker.kv_transfer.receiver import KvReceiver, TransferRefused
from tandem.worker.metrics import WorkerMetrics

MODEL = "m"
BLOCKS = [7, 8, 9]


class FakeView:
    """The etcd view of the model's workers (`InstanceSet`'s surface the pool uses)."""

    def __init__(self, *prefill_ids: str) -> None:
        self.instances = {i: _prefill(i) for i in prefill_ids}
        self._callbacks: list[ChangeCallback] = []

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    def __iter__(self) -> Any:
        return iter(list(self.instances.values()))

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def remove(self, instance_id: str) -> None:
        info = self.instances.pop(instance_id)
        for callback in self._callbacks:
            callback("removed", info)


def _prefill(instance_id: str, draining: bool = False) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        component="worker",
        endpoint=f"{instance_id}:1",
        model=MODEL,
        role="prefill",
        draining=draining,
    )


@dataclass
class FakeQueue:
    """Records what was published and withdrawn; the depths are set by the test."""

    queued_depths: dict[str, int] = field(default_factory=dict)
    published: list[tuple[str, disagg_pb2.PrefillJob, PublishedJob]] = field(default_factory=list)
    withdrawn: list[PublishedJob] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def ensure_stream(self) -> None:
        pass

    async def publish(
        self, model: str, prefill_instance_id: str, body: bytes, headers: Any = None
    ) -> PublishedJob:
        job = PublishedJob("S", len(self.published) + 1)
        self.published.append((prefill_instance_id, disagg_pb2.PrefillJob.FromString(body), job))
        self.changed.set()
        return job

    async def withdraw(self, job: PublishedJob) -> bool:
        self.withdrawn.append(job)
        self.changed.set()
        return True

    async def depths(self, model: str) -> dict[str, int]:
        return dict(self.queued_depths)

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


class FakeEngine:
    """Parks every request on `BLOCKS`; records how each was resumed."""

    def __init__(self) -> None:
        self.resumed: dict[str, int | None] = {}  # request id -> first token (None: local)
        self.aborted: list[str] = []
        self.changed = asyncio.Event()

    def submit_parked(
        self, request: EngineRequest, listener: OutputListener
    ) -> tuple[Callable[[], None], ParkedRequest | None]:
        def abort() -> None:
            self.aborted.append(request.request_id)
            self.changed.set()

        return abort, ParkedRequest(request.request_id, 0, list(BLOCKS), handle=None)

    def resume_parked(
        self, parked: ParkedRequest, first_token: int | None, logprob: TokenLogprob | None
    ) -> bool:
        self.resumed[parked.request_id] = first_token
        self.changed.set()
        return True


@dataclass
class Decode:
    coordinator: DecodeCoordinator
    view: FakeView
    queue: FakeQueue
    engine: FakeEngine
    gate: KvReceiver
    metrics: WorkerMetrics

    def submit(self, request_id: str, prefill_id: str) -> Callable[[], None]:
        msg = worker_pb2.GenerateRequest(
            request_id=request_id,
            token_ids=[1, 2, 3],
            remote_prefill=worker_pb2.RemotePrefill(prefill_instance_id=prefill_id),
        )
        request = EngineRequest(request_id, [1, 2, 3], SamplingConfig())
        return self.coordinator.submit(msg, request, lambda _: None, {})

    def jobs_for(self, prefill_id: str) -> list[disagg_pb2.PrefillJob]:
        return [job for target, job, _ in self.queue.published if target == prefill_id]

    def outcome(self, name: str) -> float:
        return self.metrics.remote_prefills.labels(name)._value.get()

    @property
    def redeliveries(self) -> float:
        return self.metrics.prefill_redeliveries._value.get()


def make_decode(*prefill_ids: str, timeout: float = 300.0) -> Decode:
    view, queue, engine = FakeView(*prefill_ids), FakeQueue(), FakeEngine()
    gate = KvReceiver("d")
    metrics = WorkerMetrics(cast(Any, None), model=MODEL, instance_id="d", role="decode")
    pool = PrefillPool(cast(InstanceSet, view), queue, MODEL)
    coordinator = DecodeCoordinator(
        "d", MODEL, cast(Any, engine), cast(Any, queue), metrics, timeout, gate=gate, pool=pool
    )
    return Decode(coordinator, view, queue, engine, gate, metrics)


def completion(job: disagg_pb2.PrefillJob, token: int) -> disagg_pb2.PrefillCompletion:
    return disagg_pb2.PrefillCompletion(
        request_id=job.request_id, job_id=job.job_id, ok=True, first_token=token
    )


def refused(gate: KvReceiver, job_id: str, blocks: Sequence[int] = BLOCKS) -> bool:
    try:
        gate.end(gate.begin(job_id, blocks, "p"), ok=False)
    except TransferRefused:
        return True
    return False


async def test_jobs_of_a_prefill_worker_that_left_move_to_the_least_loaded_live_ones() -> None:
    d = make_decode("p1", "p2", "p3")
    d.queue.queued_depths = {"p2": 2, "p3": 1}
    d.submit("a", "p1")
    d.submit("b", "p1")
    await d.queue.until(lambda: len(d.jobs_for("p1")) == 2)
    old = {job.request_id: job for job in d.jobs_for("p1")}

    d.view.remove("p1")
    await d.queue.until(lambda: len(d.queue.published) == 4 and len(d.queue.withdrawn) == 2)
    # Both old messages withdrawn; one job each to p3 (1 queued) then p2 (2 vs p3's 2: by id).
    assert sorted(j.sequence for j in d.queue.withdrawn) == [1, 2]
    moved = {job.request_id: (target, job) for target, job, _ in d.queue.published[2:]}
    assert moved["a"][0] == "p3" and moved["b"][0] == "p2"
    assert d.redeliveries == 2
    for request_id, (_, job) in moved.items():
        assert job.job_id != old[request_id].job_id  # a fresh transfer id
        assert list(job.dst_block_ids) == BLOCKS
    # The gate takes the new attempts only: the old ones' transfers and completions are refused.
    assert refused(d.gate, old["a"].job_id)
    assert not await d.coordinator.complete(completion(old["a"], 5))
    assert d.outcome("refused_late") == 1
    assert await d.coordinator.complete(completion(moved["a"][1], 5))
    assert d.engine.resumed == {"a": 5}
    assert d.outcome("remote") == 1 and d.outcome("local_timeout") == 0


async def test_the_new_attempt_waits_until_the_old_one_writes_no_more() -> None:
    d = make_decode("p1", "p2")
    d.submit("a", "p1")
    await d.queue.until(lambda: len(d.queue.published) == 1)
    (old,) = d.jobs_for("p1")
    writing = d.gate.begin(old.job_id, BLOCKS, "p1")  # p1's transfer is mid-write

    d.view.remove("p1")
    await d.queue.until(lambda: len(d.queue.withdrawn) == 1)
    await _run_ready()
    assert d.jobs_for("p2") == []  # not while the old transfer may still write
    d.gate.end(writing, ok=True)
    await d.queue.until(lambda: len(d.jobs_for("p2")) == 1)
    (new,) = d.jobs_for("p2")
    assert not d.gate.landed(old.job_id)  # withdrawn from the gate, landed or not
    assert not refused(d.gate, new.job_id)


async def test_no_live_prefill_worker_left_prefills_locally_at_once() -> None:
    d = make_decode("p1", "p2")
    d.view.instances["p2"] = _prefill("p2", draining=True)  # going away too: not a target
    d.submit("a", "p1")
    await d.queue.until(lambda: len(d.queue.published) == 1)
    (old,) = d.jobs_for("p1")

    d.view.remove("p1")
    await _until(d.engine, lambda: "a" in d.engine.resumed)
    assert d.engine.resumed == {"a": None}  # prefilled here
    assert d.outcome("local_no_prefill_worker") == 1 and d.redeliveries == 0
    await d.queue.until(lambda: len(d.queue.withdrawn) == 1)
    assert refused(d.gate, old.job_id)


async def test_a_job_for_a_prefill_worker_already_gone_is_queued_elsewhere() -> None:
    d = make_decode("p1", "p2")
    d.view.remove("p1")  # the frontend chose p1 before it saw it leave
    d.submit("a", "p1")
    await d.queue.until(lambda: len(d.queue.published) == 1)
    assert [target for target, _, _ in d.queue.published] == ["p2"]
    assert d.redeliveries == 1


async def test_a_request_that_ends_mid_redelivery_frees_its_blocks_after_the_old_write() -> None:
    d = make_decode("p1", "p2")
    cancel = d.submit("a", "p1")
    await d.queue.until(lambda: len(d.queue.published) == 1)
    (old,) = d.jobs_for("p1")
    writing = d.gate.begin(old.job_id, BLOCKS, "p1")

    d.view.remove("p1")
    await d.queue.until(lambda: len(d.queue.withdrawn) == 1)
    cancel()  # the client left
    await _run_ready()
    assert d.engine.aborted == []  # the old transfer may still write into the blocks
    d.gate.end(writing, ok=False)
    await _until(d.engine, lambda: d.engine.aborted == ["a"])
    await _run_ready()
    assert d.jobs_for("p2") == [] and d.gate.num_expected == 0


async def test_a_moved_job_keeps_the_original_bound() -> None:
    d = make_decode("p1", "p2")
    d.submit("a", "p1")
    await d.queue.until(lambda: len(d.queue.published) == 1)
    (before,) = d.coordinator._waiting.values()
    assert before.timer is not None
    deadline = before.timer.when()
    d.view.remove("p1")
    await d.queue.until(lambda: len(d.jobs_for("p2")) == 1)
    (after,) = d.coordinator._waiting.values()  # under the new job id, the same wait
    assert after.job_id == d.jobs_for("p2")[0].job_id
    assert after.timer is before.timer and after.timer.when() == deadline


async def test_no_completion_within_the_timeout_prefills_locally_and_refuses_a_late_one() -> None:
    d = make_decode("p1", timeout=0.05)
    d.submit("a", "p1")
    await _until(d.engine, lambda: "a" in d.engine.resumed)
    assert d.engine.resumed == {"a": None} and d.outcome("local_timeout") == 1
    await d.queue.until(lambda: len(d.queue.withdrawn) == 1)
    ((_, job, _),) = d.queue.published
    assert refused(d.gate, job.job_id)
    assert not await d.coordinator.complete(completion(job, 5))


async def _until(engine: FakeEngine, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            engine.changed.clear()
            await engine.changed.wait()


async def _run_ready() -> None:
    """Let every callback that is ready run (the fakes do no I/O: nothing else to wait for)."""
    for _ in range(50):
        await asyncio.sleep(0)
