"""One simulated mocker worker: the real scheduler and block manager, stepped on simulated time.

A `SimWorker` is what a mocker worker process is to the router, without the
process: the `MockerEngine`'s own `Scheduler` and `BlockManager` (so it
batches, chunks, caches, evicts and preempts as a live mocker does), steps
that end after their modelled time on the loop's clock (the mocker's step
loop, with no timer error), its KV events applied to the router's
index by an `IndexFeed`, and the worker's real `LoadReporter`. In a
disaggregated fleet (sim_disagg.py) a decode worker parks a request and resumes
it when its KV "arrives", and a prefill worker runs prefill only with the
blocks pinned: the shared scheduler's `park` / `resume_remote` / `release`, as
the mocker engine's disaggregation hooks use them. Run it on a
`SimulatedTimeLoop` (sim_loop.py); on a real loop it is a mocker worker
without gRPC.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from tandem.router.kv_router import KvRouter
from tandem.router.radix_index import RadixIndex
from tandem.runtime.block_hash import BlockHashes
from tandem.runtime.instance_info import InstanceInfo, Role
from tandem.runtime.kv_tiers import DEVICE_TIER
from tandem.runtime.pacing import WritePacer
from tandem.runtime.tasks import cancel_and_wait
from tandem.runtime.wire.kv_events_pb2 import LoadMetrics
from tandem.worker.config import LOAD_REPORT_INTERVAL_SECONDS
from tandem.worker.engine import EngineRequest
from tandem.worker.kv_publisher import MIN_FLUSH_INTERVAL_S
from tandem.worker.load_reporter import LoadReporter
from tandem.worker.mocker import MockerConfig, MockerEngine
from tandem.worker.mocker.sequence import MockSequence
from tandem.worker.scheduler import ScheduledBatch
from tandem.worker.sequence import SequenceStatus

from .sim_loop import SimulatedTimeLoop

_FINISHED = SequenceStatus.FINISHED
OutputCallback = Callable[[MockSequence, float], None]
"""Called after each step for every sequence that got a token: (sequence, time)."""


class IndexFeed:
    """Owns one worker's KV events on their way to a router's index (a `KvEventSink`).

    Events are applied with the index methods the router's KvEventFollower
    applies them with, in order, and at the pace the worker's publisher sends
    them: everything since the last flush at once, at most once per
    MIN_FLUSH_INTERVAL_S, so the index lags the cache as it does live (less the
    network).
    """

    def __init__(self, index: RadixIndex, worker: str) -> None:
        self._index = index
        self._worker = worker
        # (stored?, hashes, tier) in order; None for a clear. Evictions come one block at a
        # time, so consecutive removals from one tier share one entry.
        self._pending: list[tuple[bool, list[int], str] | None] = []
        self._wake = asyncio.Event()

    def stored(
        self, parent_hash: int | None, blocks: list[tuple[int, int]], tier: str = DEVICE_TIER
    ) -> None:
        self._pending.append((True, [seq_hash for seq_hash, _ in blocks], tier))
        self._wake.set()

    def removed(self, block_hashes: list[int], tier: str = DEVICE_TIER) -> None:
        pending = self._pending
        last = pending[-1] if pending else None
        if last is not None and not last[0] and last[2] == tier:
            last[1].extend(block_hashes)
        else:
            pending.append((False, list(block_hashes), tier))
        self._wake.set()

    def cleared(self) -> None:
        self._pending.append(None)
        self._wake.set()

    async def run(self) -> None:
        pacer = WritePacer(MIN_FLUSH_INTERVAL_S)
        index, worker = self._index, self._worker
        while True:
            await self._wake.wait()
            await pacer.wait()
            self._wake.clear()
            pending, self._pending = self._pending, []
            for op in pending:
                if op is None:
                    index.clear(worker)
                elif op[0]:
                    index.store(worker, op[1], op[2])
                else:
                    index.remove(worker, op[1], op[2])
            pacer.flushed()


class _CallbackTransport:
    """Delivers load reports to a function instead of NATS."""

    def __init__(self, deliver: Callable[[LoadMetrics], None]) -> None:
        self._deliver = deliver

    async def publish_load(self, metrics: LoadMetrics) -> None:
        self._deliver(metrics)


def load_sink(router: KvRouter) -> Callable[[LoadMetrics], None]:
    """What `router` does with each LoadMetrics it receives (from NATS, live)."""

    def deliver(metrics: LoadMetrics) -> None:
        load = router.load
        load.report(
            metrics.instance_id,
            metrics.active_blocks,
            metrics.pending_prefill_tokens,
            metrics.total_blocks,
        )
        load.expire()

    return deliver


def worker_info(
    instance_id: str, config: MockerConfig, started_at: float = 0.0, role: Role = "aggregated"
) -> InstanceInfo:
    """The registration a mocker worker of `config` (and `role`) would write to etcd."""
    return InstanceInfo(
        instance_id,
        "worker",
        f"simulated:{instance_id}",
        model=config.model_name,
        role=role,
        block_size=config.scheduler.kv_cache_block_size,
        total_blocks=config.num_kv_blocks,
        started_at=started_at,
    )


class SimWorker:
    """Owns one simulated worker: its engine's scheduler, step loop, KV feed and load reporter."""

    def __init__(
        self,
        instance_id: str,
        config: MockerConfig,
        on_output: OutputCallback,
        *,
        index: RadixIndex | None = None,
        on_load: Callable[[LoadMetrics], None] | None = None,
        load_report_interval: float = LOAD_REPORT_INTERVAL_SECONDS,
    ) -> None:
        self.instance_id = instance_id
        self.feed = IndexFeed(index, instance_id) if index is not None else None
        self.engine = MockerEngine(config, self.feed)
        self.reporter = (
            LoadReporter(
                instance_id,
                self.engine.stats,
                _CallbackTransport(on_load),
                interval=load_report_interval,
            )
            if on_load is not None
            else None
        )
        self._on_output = on_output
        self.num_prefill_tokens = 0  # prompt tokens its steps computed (not cached, not received)
        self._batch: ScheduledBatch[MockSequence] | None = None  # the step in flight
        self._is_stepping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._call_at: Callable[[float, Callable[[], None]], object] | None = None

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._call_at = loop.call_at_bare if isinstance(loop, SimulatedTimeLoop) else loop.call_at
        if self.feed is not None:
            self._tasks.append(asyncio.create_task(self.feed.run(), name="kv feed"))
        if self.reporter is not None:
            self.reporter.start()

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        if self.reporter is not None:
            await self.reporter.stop()

    def submit(
        self, request: EngineRequest, rng: random.Random, hashes: BlockHashes | None = None
    ) -> MockSequence:
        """Admit `request` under the worker's rules (EngineError if refused) and queue it.

        Its tokens are drawn from `rng`, so a seeded run repeats exactly. `hashes`: its
        prompt's block hashes when the caller has them (sim_prompts.py), so the scheduler
        does not hash the prompt again; the same in every method below.
        """
        seq = self._sequence(request, rng, hashes)
        self.engine.scheduler.add(seq)
        self._wake()
        self._load_changed()
        return seq

    # -- disaggregated serving (the mocker engine's hooks, on the scheduler directly) --------

    def submit_parked(
        self, request: EngineRequest, rng: random.Random, hashes: BlockHashes | None = None
    ) -> MockSequence | None:
        """Decode side: admit `request` parked with all its blocks allocated (its cached
        prefix matched), unscheduled until `resume_remote`; None when its blocks do not fit
        now (the caller submits it to run here instead). EngineError if refused."""
        seq = self._sequence(request, rng, hashes)
        if not self.engine.scheduler.park(seq):
            return None
        self._load_changed()
        return seq

    def resume_remote(self, seq: MockSequence, first_token: int) -> bool:
        """Decode side: `seq`'s KV arrived with `first_token` (the prefill worker's, drawn
        from the same generator, so it is skipped here): decode on. False if not parked."""
        sched = self.engine.scheduler
        if seq not in sched.parked:
            return False
        seq.skip_token()
        sched.resume_remote(seq, first_token)
        self._wake()
        return True

    def prefill_only(
        self, request: EngineRequest, rng: random.Random, hashes: BlockHashes | None = None
    ) -> MockSequence:
        """Prefill side: compute `request`'s prompt and first token only; the sequence
        finishes after its prefill with its blocks pinned until `release`."""
        seq = self._sequence(request, rng, hashes)
        seq.max_new_tokens = 1
        seq.pin_blocks = True
        self.engine.scheduler.add(seq)
        self._wake()
        self._load_changed()
        return seq

    def release(self, seq: MockSequence) -> None:
        """Unpin a finished prefill-only sequence's blocks (they stay in the prefix cache)."""
        self.engine.scheduler.release(seq)

    def _sequence(
        self, request: EngineRequest, rng: random.Random, hashes: BlockHashes | None
    ) -> MockSequence:
        seq = self.engine.new_sequence(request)
        seq.rng = rng
        if hashes is not None and self.engine.scheduler.block_manager.enable_prefix_caching:
            # What the scheduler's first admission attempt would hash (Scheduler._allocate).
            seq.prompt_hashes, seq.num_hashed_tokens = hashes, len(seq.token_ids)
        return seq

    def _wake(self) -> None:
        if not self._is_stepping:
            # Like the mocker's step loop woken by a new request: on the loop's next turn,
            # so requests that arrive together start in one step.
            self._is_stepping = True
            assert self._loop is not None, "start() the worker first"
            self._loop.call_soon(self._start_step)

    def _load_changed(self) -> None:
        # As the worker's gRPC service does when a request starts or ends.
        if self.reporter is not None:
            self.reporter.poke()

    # The step loop as callbacks rather than a task: one timer per step, no future or
    # task switch (a third of the simulator's time went there); on the simulated loop a
    # bare timer, without the Handle and context of asyncio's (another 10 %).

    def _start_step(self) -> None:
        sched, loop = self.engine.scheduler, self._loop
        assert loop is not None
        if not sched.has_work:
            self._is_stepping = False
            return
        batch = sched.schedule()
        if not batch:
            loop.call_soon(self._start_step)  # nothing fits this step (only after a preemption)
            return
        self._batch = batch
        self.num_prefill_tokens += batch.num_prefill_tokens
        assert self._call_at is not None
        self._call_at(loop.time() + self.engine.step_seconds(batch), self._end_step)

    def _end_step(self) -> None:
        batch, self._batch = self._batch, None
        assert batch is not None
        self.engine.scheduler.postprocess(batch, [seq.draw_token() for seq in batch.sampled])
        assert self._loop is not None
        now = self._loop.time()
        on_output = self._on_output
        finished = False
        for seq in batch.sampled:
            on_output(seq, now)
            finished = finished or seq.status is _FINISHED
        if finished:
            self._load_changed()
        self._start_step()
