"""The prefill job queue: a JetStream work-queue stream, one durable consumer per prefill worker.

Stream `TANDEM_PREFILL_{ns}` holds subjects `tandem.{ns}.prefill.>` with
work-queue retention: a job stays until its consumer acks it (or it is
withdrawn, or it ages out), so the number of messages on a model's subjects
is its queue depth, jobs running included. Each prefill worker reads only its
own subject (`tandem.{ns}.prefill.{model}.{instance_id}`: the frontend chose
it KV-aware) through a durable pull consumer with explicit acks: a job it
pulled and never acked (the process stalled, or it naks) is delivered again
after `ack_wait`. A job whose prefill worker is gone for good is the decode
side's to move (withdraw it, publish it again for another worker); it also
bounds how long it waits for any of that.

Trace context travels in the message headers (W3C `traceparent`, `tracestate`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError, ServerError

from . import subjects
from .messaging import Messaging

log = logging.getLogger(__name__)

PREFILL_STREAM_MAX_AGE_SECONDS = 300.0
"""A job nobody took in this long (its prefill worker died) is dropped; its decoder gave up long ago."""
PREFILL_ACK_WAIT_SECONDS = 30.0
"""A pulled job not acked within this is delivered again (to the same worker's consumer)."""
PREFILL_MAX_DELIVER = 3
PREFILL_CONSUMER_INACTIVE_SECONDS = 600.0
"""A consumer nobody pulls from for this long (its worker is gone) is deleted by the server."""


@dataclass(frozen=True, slots=True)
class PublishedJob:
    """Where a published job sits in the stream: what withdrawing it needs."""

    stream: str
    sequence: int


class PrefillQueue:
    """Publish, withdraw, consume and count prefill jobs on one connection (any service)."""

    def __init__(self, messaging: Messaging) -> None:
        self._messaging = messaging
        self._namespace = messaging.namespace
        self.stream = subjects.prefill_stream(self._namespace)
        self._ready = False

    async def ensure_stream(self) -> None:
        """Create (or keep) the work-queue stream; idempotent."""
        if self._ready:
            return
        config = StreamConfig(
            name=self.stream,
            subjects=[subjects.prefill_subjects_all(self._namespace)],
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=PREFILL_STREAM_MAX_AGE_SECONDS,
        )
        js = self._messaging.js
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
        self._ready = True

    async def publish(
        self,
        model: str,
        prefill_instance_id: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> PublishedJob:
        """Put a job on `prefill_instance_id`'s subject; returns once JetStream stored it."""
        await self.ensure_stream()
        ack = await self._messaging.js.publish(
            subjects.prefill_job_subject(self._namespace, model, prefill_instance_id),
            body,
            stream=self.stream,
            headers=dict(headers) if headers else None,
        )
        return PublishedJob(ack.stream, ack.seq)

    async def withdraw(self, job: PublishedJob) -> bool:
        """Delete a job not yet acked (its request ended or is served locally); False if gone."""
        try:
            return await self._messaging.js.delete_msg(job.stream, job.sequence)
        except (NotFoundError, BadRequestError, ServerError):
            return False  # taken and acked already, or aged out ("no message found")

    async def depth(self, model: str) -> int:
        """Jobs of `model` in the stream now: queued plus running (acked ones are gone)."""
        return sum((await self.depths(model)).values())

    async def depths(self, model: str) -> dict[str, int]:
        """Jobs of `model` in the stream now per prefill worker (instance id -> count; a worker
        with none is absent)."""
        await self.ensure_stream()
        info = await self._messaging.js.stream_info(
            self.stream, subjects_filter=subjects.prefill_model_subjects(self._namespace, model)
        )
        prefix = subjects.prefill_job_subject(self._namespace, model, "")
        return {
            subject[len(prefix) :]: count
            for subject, count in (info.state.subjects or {}).items()
            if subject.startswith(prefix)
        }

    async def consumer(self, model: str, prefill_instance_id: str) -> JobConsumer:
        """The durable consumer of one prefill worker's jobs (created on first use, kept after)."""
        await self.ensure_stream()
        durable = f"prefill_{prefill_instance_id}".replace(".", "_")
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=PREFILL_ACK_WAIT_SECONDS,
            max_deliver=PREFILL_MAX_DELIVER,
            inactive_threshold=PREFILL_CONSUMER_INACTIVE_SECONDS,
        )
        sub = await self._messaging.js.pull_subscribe(
            subjects.prefill_job_subject(self._namespace, model, prefill_instance_id),
            durable=durable,
            stream=self.stream,
            config=config,
        )
        return JobConsumer(sub)


class JobConsumer:
    """Pulls one prefill worker's jobs; the caller acks, naks or terminates each."""

    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self._sub = sub

    async def fetch(self, batch: int, timeout: float) -> Sequence[Msg]:
        """Up to `batch` jobs, waiting at most `timeout` seconds; [] when none came."""
        try:
            return await self._sub.fetch(batch, timeout=timeout)
        except TimeoutError:
            return []

    async def close(self) -> None:
        # Unsubscribe only: the durable consumer (and any job it holds) outlives this process.
        try:
            await self._sub.unsubscribe()
        except Exception as exc:  # closing must not fail shutdown
            log.debug("prefill consumer unsubscribe failed: %s", exc)
