"""The decode worker's half of a remote prefill: park, publish the job, wait boundedly, resume.

A request that arrives with `remote_prefill` is admitted parked (all its
blocks allocated, not scheduled) and its job goes on the prefill worker's
JetStream subject. Then exactly one of these ends the wait:
- `complete()` (the prefill worker's `Disagg.CompletePrefill`): the KV is in
  the blocks, decode starts from the first token it sampled; a completion that
  says the prefill failed makes this worker prefill locally at once;
- the bounded wait (`--remote-prefill-timeout`) runs out: the job is withdrawn
  and this worker prefills locally; a completion that comes later is refused,
  so a late transfer never lands in blocks this worker computes itself;
- the request ends (client gone, engine stopping): the job is withdrawn and
  the blocks are freed; the prefill side finds its completion refused.

When the prefill worker leaves meanwhile (`PrefillPool`: its etcd record is
gone), the job moves: it is withdrawn from that worker's subject and published
again, under a new job id, for the least loaded live prefill worker, within
the same bounded wait. The old job id is withdrawn from the transfer gate
first (no write of it is in flight once that returns) and its completion is
refused, so the blocks receive exactly one transfer. With no prefill worker
left, this worker prefills at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from tandem.runtime.prefill_queue import PrefillQueue, PublishedJob
from tandem.runtime.wire import disagg_pb2, worker_pb2

from ..engine import EngineRequest, OutputListener, TokenLogprob
from .engine_hooks import DisaggEngine, ParkedRequest
from .prefill_pool import PrefillPool

log = logging.getLogger(__name__)


class TransferGate(Protocol):
    """The data plane's receiver (`kv_transfer.receiver.KvReceiver`): which transfers may land."""

    def expect(self, transfer_id: str, dst_block_ids: Sequence[int]) -> None: ...

    async def withdraw(self, transfer_id: str) -> None: ...


class DisaggMetrics(Protocol):
    """The worker metrics the disaggregated flow updates (`services/worker/metrics.py`)."""

    remote_prefills: Counter
    prefill_redeliveries: Counter
    prefill_jobs: Counter
    kv_transfer_bytes: Counter
    kv_transfer_seconds: Histogram
    kv_transfer_gbps: Gauge


@dataclass(slots=True, eq=False)
class _Waiting:
    """One parked request's wait for its KV, and its job's current attempt."""

    parked: ParkedRequest
    job: disagg_pb2.PrefillJob  # `job_id` is the current attempt's
    prefill_id: str  # the prefill worker the current attempt is queued for
    headers: dict[str, str]
    timer: asyncio.TimerHandle | None = None
    published: PublishedJob | None = None
    retiring: asyncio.Task[None] | None = None  # the previous attempt's gate withdrawal
    ended: bool = False

    @property
    def job_id(self) -> str:
        return self.job.job_id


class DecodeCoordinator:
    """Owns this decode worker's parked requests and the jobs it published for them."""

    def __init__(
        self,
        instance_id: str,
        model: str,
        engine: DisaggEngine,
        queue: PrefillQueue,
        metrics: DisaggMetrics,
        timeout: float,
        gate: TransferGate | None = None,
        pool: PrefillPool | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.model = model
        self.engine = engine
        self.queue = queue
        self.metrics = metrics
        self.timeout = timeout
        self.gate = gate
        self.pool = pool  # None: a job whose prefill worker left waits out the timeout
        self.endpoint = ""  # this worker's gRPC endpoint, set once it serves
        self._waiting: dict[str, _Waiting] = {}  # current job id -> its wait
        self._tasks: set[asyncio.Task[Any]] = set()
        if pool is not None:
            pool.on_gone(self._prefill_worker_gone)

    @property
    def num_parked(self) -> int:
        return len(self._waiting)

    def submit(
        self,
        msg: worker_pb2.GenerateRequest,
        request: EngineRequest,
        listener: OutputListener,
        trace_headers: Mapping[str, str],
    ) -> Callable[[], None]:
        """Admit `request` parked and publish its prefill job; returns its abort."""
        abort, parked = self.engine.submit_parked(request, listener)
        if parked is None:
            self._count("local_no_blocks")
            return abort
        job = disagg_pb2.PrefillJob(
            request_id=msg.request_id,
            job_id=uuid.uuid4().hex,
            model=self.model,
            token_ids=msg.token_ids,
            sampling=msg.sampling,
            decode_instance_id=self.instance_id,
            decode_endpoint=self.endpoint,
            num_cached_tokens=parked.num_cached_tokens,
            dst_block_ids=parked.dst_block_ids,
            num_generated_before=msg.num_generated_before,
        )
        prefill_id = msg.remote_prefill.prefill_instance_id
        wait = _Waiting(parked, job, prefill_id, dict(trace_headers))
        self._waiting[wait.job_id] = wait
        if self.gate is not None:
            self.gate.expect(wait.job_id, parked.dst_block_ids)
        loop = asyncio.get_running_loop()
        wait.timer = loop.call_later(self.timeout, self._timed_out, wait)
        if self.pool is not None and self.pool.is_gone(prefill_id):
            # The frontend chose it before it saw it leave: queue the job elsewhere at once.
            self._spawn(self._redeliver(prefill_id, [wait]))
        else:
            self._spawn(self._publish(wait, wait.job_id))
        log.debug(
            "parked for remote prefill prefill_instance=%s job_id=%s cached=%d blocks=%d",
            prefill_id,
            wait.job_id,
            parked.num_cached_tokens,
            len(parked.dst_block_ids),
            extra={"request_id": msg.request_id, "instance_id": self.instance_id},
        )

        def cancel() -> None:
            if wait.ended:
                abort()
                return
            # The job is withdrawn and a completion now refused; the blocks are freed once
            # no transfer writes into them.
            self._end(wait)
            self._after_gate(wait, abort)

        return cancel

    async def complete(self, done: disagg_pb2.PrefillCompletion) -> bool:
        """Apply a prefill worker's completion; False when nothing waits for that job."""
        wait = self._waiting.get(done.job_id)
        if wait is None or wait.parked.request_id != done.request_id:
            self._count("refused_late")
            return False
        self._end(wait, withdraw=False)  # the prefill worker acks or terminates the job itself
        if self.gate is not None:
            await self.gate.withdraw(wait.job_id)  # nothing writes into the blocks after this
        extra = {"request_id": done.request_id, "instance_id": self.instance_id}
        if not done.ok:
            log.warning(
                "remote prefill failed on %s (%s); prefilling locally",
                done.prefill_instance_id,
                done.error,
                extra=extra,
            )
            self._count("local_failed")
            return self.engine.resume_parked(wait.parked, None, None)
        logprob = None
        if done.HasField("logprob"):
            lp = done.logprob
            logprob = TokenLogprob(
                lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top]
            )
        accepted = self.engine.resume_parked(wait.parked, done.first_token, logprob)
        if accepted:
            self._count("remote")
            m = self.metrics
            m.kv_transfer_bytes.labels("received").inc(done.transfer_bytes)
        return accepted

    async def start(self) -> None:
        """Watch the prefill workers (when a pool was given) and make sure the stream exists."""
        if self.pool is not None:
            await self.pool.start()
        await self.queue.ensure_stream()

    async def close(self) -> None:
        """Withdraw every job still waiting (the engine aborts the parked requests)."""
        if self.pool is not None:
            await self.pool.close()
        for wait in list(self._waiting.values()):
            self._end(wait)
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    # -- internals ---------------------------------------------------------------

    async def _publish(self, wait: _Waiting, job_id: str) -> None:
        """Queue attempt `job_id` of `wait`'s job for `wait.prefill_id`."""
        try:
            published = await self.queue.publish(
                self.model, wait.prefill_id, wait.job.SerializeToString(), wait.headers
            )
        except Exception as exc:
            if wait.ended or wait.job_id != job_id:
                return
            log.warning(
                "prefill job not published (%s); prefilling locally",
                exc,
                extra={"request_id": wait.job.request_id, "instance_id": self.instance_id},
            )
            self._end(wait, withdraw=False)
            self._count("local_publish_failed")
            self._after_gate(wait, lambda: self.engine.resume_parked(wait.parked, None, None))
            return
        if wait.ended or wait.job_id != job_id:
            # Ended, or moved to another prefill worker, while publishing: take it back.
            await self.queue.withdraw(published)
            return
        wait.published = published

    def _prefill_worker_gone(self, prefill_id: str) -> None:
        waits = [w for w in self._waiting.values() if w.prefill_id == prefill_id]
        if waits:
            self._spawn(self._redeliver(prefill_id, waits))

    async def _redeliver(self, gone: str, waits: list[_Waiting]) -> None:
        """Move the jobs queued for (or taken by) prefill worker `gone` to live ones."""
        assert self.pool is not None
        targets = await self.pool.assign(len(waits), avoid={gone})
        for i, wait in enumerate(waits):
            if wait.ended or wait.prefill_id != gone:
                continue  # ended, or moved already, while the targets were chosen
            extra = {"request_id": wait.parked.request_id, "instance_id": self.instance_id}
            if not targets:
                log.warning(
                    "prefill worker %s left and no other is live; prefilling locally",
                    gone,
                    extra=extra,
                )
                self._end(wait)
                self._count("local_no_prefill_worker")
                self._after_gate(wait, partial(self.engine.resume_parked, wait.parked, None, None))
                continue
            old_id, old_published = wait.job_id, wait.published
            job_id = uuid.uuid4().hex
            # From here a completion of the old attempt is refused (unknown job id).
            del self._waiting[old_id]
            wait.job.job_id = job_id
            wait.prefill_id = targets[i]
            wait.published = None
            self._waiting[job_id] = wait
            if old_published is not None:
                self._spawn(self.queue.withdraw(old_published))
            previous = wait.retiring
            wait.retiring = self._spawn(self._retire(old_id, previous))
            self.metrics.prefill_redeliveries.inc()
            log.info(
                "prefill worker %s left; job moved to %s job_id=%s (was %s)",
                gone,
                wait.prefill_id,
                job_id,
                old_id,
                extra=extra,
            )
            self._spawn(self._publish_after_retired(wait, job_id))

    async def _retire(self, job_id: str, previous: asyncio.Task[None] | None) -> None:
        """Until no transfer of the earlier attempts (`job_id`, and before it `previous`) writes."""
        if previous is not None:
            await asyncio.shield(previous)
        if self.gate is not None:
            await self.gate.withdraw(job_id)

    async def _publish_after_retired(self, wait: _Waiting, job_id: str) -> None:
        # Only once the old attempt can write no more does the gate take the new one: the
        # blocks receive one transfer, never two at once.
        if wait.retiring is not None:
            await asyncio.shield(wait.retiring)
        if wait.ended or wait.job_id != job_id:
            return
        if self.gate is not None:
            self.gate.expect(job_id, wait.parked.dst_block_ids)
        await self._publish(wait, job_id)

    def _timed_out(self, wait: _Waiting) -> None:
        if wait.ended:
            return
        log.warning(
            "no remote prefill within %.1fs; prefilling locally job_id=%s",
            self.timeout,
            wait.job_id,
            extra={"request_id": wait.parked.request_id, "instance_id": self.instance_id},
        )
        self._end(wait)
        self._count("local_timeout")
        self._after_gate(wait, lambda: self.engine.resume_parked(wait.parked, None, None))

    def _end(self, wait: _Waiting, withdraw: bool = True) -> None:
        if wait.ended:
            return
        wait.ended = True
        self._waiting.pop(wait.job_id, None)
        if wait.timer is not None:
            wait.timer.cancel()
        if withdraw and wait.published is not None:
            self._spawn(self.queue.withdraw(wait.published))

    def _after_gate(self, wait: _Waiting, then: Callable[[], object]) -> None:
        """`then()` once no transfer can write into `wait`'s blocks any more."""
        gate = self.gate
        if gate is None:
            then()
            return

        async def withdraw_then() -> None:
            try:
                await gate.withdraw(wait.job_id)
                if wait.retiring is not None:  # an earlier attempt may still be writing
                    await asyncio.shield(wait.retiring)
            finally:
                then()

        self._spawn(withdraw_then())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _count(self, outcome: str) -> None:
        self.metrics.remote_prefills.labels(outcome).inc()
