"""The prefill worker's half: take jobs off its JetStream consumer, prefill, transfer, report.

One job: the engine runs prefill only (first token sampled here) with the
blocks pinned; the transport writes the blocks the decode worker does not
hold into the ones it allocated; the pinned blocks are released (they stay
in this worker's prefix cache); the decode worker is told
(`Disagg.CompletePrefill`) and the job acked. When the decode worker cannot
be reached (it died mid-transfer), the job is dropped: terminated, never
redelivered, blocks released; the frontend's migration takes the request
elsewhere. A job that fails here for an unexpected reason is nak'ed, so
JetStream delivers it again (at most `PREFILL_MAX_DELIVER` times).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind, Tracer
from tandem.runtime.grpc_util import create_channel
from tandem.runtime.prefill_queue import JobConsumer, PrefillQueue
from tandem.runtime.tasks import cancel_and_wait
from tandem.runtime.tracing import context_from_metadata
from tandem.runtime.wire import disagg_pb2, disagg_pb2_grpc, worker_pb2

from ..engine import EngineError, EngineRequest
from ..grpc_service import to_engine_request
from ..kv_transfer.transport import BaseKvTransport, PeerInfo, TransferError, TransferStats
from .decode_side import DisaggMetrics
from .engine_hooks import DisaggEngine, PrefillResult

log = logging.getLogger(__name__)

_COMPLETE_TIMEOUT_SECONDS = 10.0
_FETCH_WAIT_SECONDS = 1.0


class PrefillJobRunner:
    """Owns this prefill worker's job consumer, the jobs running and the channels to decoders."""

    def __init__(
        self,
        instance_id: str,
        model: str,
        engine: DisaggEngine,
        block_size: int,
        queue: PrefillQueue,
        transport: BaseKvTransport,
        metrics: DisaggMetrics,
        *,
        max_jobs: int = 64,
        tracer: Tracer | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.model = model
        self.engine = engine
        self.block_size = block_size
        self.queue = queue
        self.transport = transport
        self.metrics = metrics
        self.max_jobs = max_jobs
        self.tracer = tracer
        self._consumer: JobConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._stubs: dict[str, disagg_pb2_grpc.DisaggStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    @property
    def num_running(self) -> int:
        return len(self._jobs)

    async def start(self) -> None:
        self._consumer = await self.queue.consumer(self.model, self.instance_id)
        self._task = asyncio.create_task(self._pull(), name="prefill-jobs")

    async def stop(self) -> None:
        """Stop taking jobs; the running ones end (unacked ones go back to the stream)."""
        await cancel_and_wait(self._task)
        self._task = None
        for task in list(self._jobs):
            task.cancel()
        if self._jobs:
            await asyncio.wait(list(self._jobs), timeout=5.0)
        if self._consumer is not None:
            await self._consumer.close()
        for channel in self._channels:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    async def _pull(self) -> None:
        assert self._consumer is not None
        slot_freed = asyncio.Event()
        while True:
            if len(self._jobs) >= self.max_jobs:
                slot_freed.clear()
                await slot_freed.wait()
                continue
            try:
                # One job a fetch: nats-py's fetch of several waits for the whole batch (or
                # its timeout) once the first has come, which would hold that job back.
                msgs = await self._consumer.fetch(1, _FETCH_WAIT_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS reconnecting: try again shortly
                log.warning("prefill job fetch failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                task = asyncio.create_task(self._run(msg))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
                task.add_done_callback(lambda _: slot_freed.set())

    async def _run(self, msg: Msg) -> None:
        try:
            job = disagg_pb2.PrefillJob.FromString(msg.data)
        except Exception as exc:
            log.error("dropping a prefill job that does not parse: %s", exc)
            await msg.term()
            return
        span = None
        if self.tracer is not None:
            span = self.tracer.start_span(
                "Worker.Prefill",
                context=context_from_metadata(msg.headers or {}),
                kind=SpanKind.CONSUMER,
                attributes={
                    "tandem.request_id": job.request_id,
                    "tandem.instance_id": self.instance_id,
                },
            )
        try:
            outcome = await self._serve(job, msg)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()  # stopping: let it be delivered again
            raise
        except Exception:
            log.exception(
                "prefill job failed; it will be delivered again",
                extra={"request_id": job.request_id, "instance_id": self.instance_id},
            )
            outcome = "error"
            with contextlib.suppress(Exception):
                await msg.nak()
        finally:
            if span is not None:
                span.end()
        self.metrics.prefill_jobs.labels(outcome).inc()

    async def _serve(self, job: disagg_pb2.PrefillJob, msg: Msg) -> str:
        extra = {"request_id": job.request_id, "instance_id": self.instance_id}
        peer = PeerInfo(job.decode_instance_id, job.decode_endpoint)
        try:
            result = await self.engine.prefill_only(_engine_request(job))
        except EngineError as exc:
            log.warning("prefill failed: %s", exc, extra=extra)
            await self._tell(peer, _failed(job, self.instance_id, str(exc)))
            await msg.term()
            return "failed"
        try:
            stats = await self._transfer(job, peer, result)
        except TransferError as exc:
            result.release()
            log.warning("KV transfer to %s failed: %s", peer.instance_id, exc, extra=extra)
            await self._tell(peer, _failed(job, self.instance_id, f"transfer failed: {exc}"))
            await msg.term()
            return "transfer_failed"
        result.release()  # the KV is on the decode worker now; here it stays cached
        m = self.metrics
        m.kv_transfer_bytes.labels("sent").inc(stats.num_bytes)
        m.kv_transfer_seconds.observe(stats.seconds)
        if stats.seconds > 0:
            m.kv_transfer_gbps.set(stats.gbps)
        done = disagg_pb2.PrefillCompletion(
            request_id=job.request_id,
            job_id=job.job_id,
            ok=True,
            first_token=result.first_token,
            prefill_instance_id=self.instance_id,
            transfer_bytes=stats.num_bytes,
            transfer_seconds=stats.seconds,
        )
        if result.logprob is not None:
            lp = result.logprob
            done.logprob.CopyFrom(
                worker_pb2.TokenLogprob(
                    token_id=lp.token_id,
                    logprob=lp.logprob,
                    top=[worker_pb2.TopLogprob(token_id=t, logprob=v) for t, v in lp.top],
                )
            )
        accepted = await self._tell(peer, done)
        await msg.ack()
        if accepted is None:
            log.warning(
                "decode worker %s unreachable; prefill job dropped", peer.instance_id, extra=extra
            )
            return "decode_unreachable"
        return "done" if accepted else "refused"

    async def _transfer(
        self, job: disagg_pb2.PrefillJob, peer: PeerInfo, result: PrefillResult
    ) -> TransferStats:
        # Every worker of a model has the same block size (the model card's).
        src = result.block_ids[job.num_cached_tokens // self.block_size :]
        dst = list(job.dst_block_ids)
        if len(src) != len(dst):
            raise TransferError(
                f"the decode worker allocated {len(dst)} blocks for {len(src)} to send"
            )
        return await self.transport.send_blocks(peer, src, dst, transfer_id=job.job_id)

    async def _tell(self, peer: PeerInfo, done: disagg_pb2.PrefillCompletion) -> bool | None:
        """Send the completion; whether the decode worker took it, None when it is unreachable."""
        stub = self._stubs.get(peer.endpoint)
        if stub is None:
            channel = create_channel(peer.endpoint)
            self._channels.append(channel)
            stub = self._stubs[peer.endpoint] = disagg_pb2_grpc.DisaggStub(channel)
        try:
            ack = await stub.CompletePrefill(done, timeout=_COMPLETE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            log.debug("CompletePrefill to %s failed: %s", peer.endpoint, exc.code())
            return None
        return ack.accepted


def _engine_request(job: disagg_pb2.PrefillJob) -> EngineRequest:
    return to_engine_request(
        worker_pb2.GenerateRequest(
            request_id=job.request_id,
            model=job.model,
            token_ids=job.token_ids,
            sampling=job.sampling,
            num_generated_before=job.num_generated_before,
        )
    )


def _failed(
    job: disagg_pb2.PrefillJob, instance_id: str, error: str
) -> disagg_pb2.PrefillCompletion:
    return disagg_pb2.PrefillCompletion(
        request_id=job.request_id,
        job_id=job.job_id,
        ok=False,
        prefill_instance_id=instance_id,
        error=error,
    )
