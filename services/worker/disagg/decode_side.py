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
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from tandem.runtime.prefill_queue import PrefillQueue, PublishedJob
from tandem.runtime.wire import disagg_pb2, worker_pb2

from ..engine import EngineRequest, OutputListener, TokenLogprob
from .engine_hooks import DisaggEngine, ParkedRequest

log = logging.getLogger(__name__)


class TransferGate(Protocol):
    """The data plane's receiver (`kv_transfer.receiver.KvReceiver`): which transfers may land."""

    def expect(self, transfer_id: str, dst_block_ids: Sequence[int]) -> None: ...

    async def withdraw(self, transfer_id: str) -> None: ...


class DisaggMetrics(Protocol):
    """The worker metrics the disaggregated flow updates (`services/worker/metrics.py`)."""

    remote_prefills: Counter
    prefill_jobs: Counter
    kv_transfer_bytes: Counter
    kv_transfer_seconds: Histogram
    kv_transfer_gbps: Gauge


@dataclass(slots=True, eq=False)
class _Waiting:
    """One parked request's wait for its KV."""

    parked: ParkedRequest
    job_id: str
    timer: asyncio.TimerHandle | None = None
    published: PublishedJob | None = None
    ended: bool = False


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
    ) -> None:
        self.instance_id = instance_id
        self.model = model
        self.engine = engine
        self.queue = queue
        self.metrics = metrics
        self.timeout = timeout
        self.gate = gate
        self.endpoint = ""  # this worker's gRPC endpoint, set once it serves
        self._waiting: dict[str, _Waiting] = {}  # job id -> its wait
        self._tasks: set[asyncio.Task[Any]] = set()

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
        wait = _Waiting(parked, uuid.uuid4().hex)
        self._waiting[wait.job_id] = wait
        if self.gate is not None:
            self.gate.expect(wait.job_id, parked.dst_block_ids)
        loop = asyncio.get_running_loop()
        wait.timer = loop.call_later(self.timeout, self._timed_out, wait)
        job = disagg_pb2.PrefillJob(
            request_id=msg.request_id,
            job_id=wait.job_id,
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
        self._spawn(self._publish(wait, prefill_id, job, dict(trace_headers)))
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

    async def close(self) -> None:
        """Withdraw every job still waiting (the engine aborts the parked requests)."""
        for wait in list(self._waiting.values()):
            self._end(wait)
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    # -- internals ---------------------------------------------------------------

    async def _publish(
        self, wait: _Waiting, prefill_id: str, job: disagg_pb2.PrefillJob, headers: dict[str, str]
    ) -> None:
        try:
            published = await self.queue.publish(
                self.model, prefill_id, job.SerializeToString(), headers
            )
        except Exception as exc:
            if wait.ended:
                return
            log.warning(
                "prefill job not published (%s); prefilling locally",
                exc,
                extra={"request_id": job.request_id, "instance_id": self.instance_id},
            )
            self._end(wait, withdraw=False)
            self._count("local_publish_failed")
            self._after_gate(wait, lambda: self.engine.resume_parked(wait.parked, None, None))
            return
        wait.published = published
        if wait.ended:  # ended while publishing: take the job back
            await self.queue.withdraw(published)

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
            finally:
                then()

        self._spawn(withdraw_then())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, outcome: str) -> None:
        self.metrics.remote_prefills.labels(outcome).inc()
