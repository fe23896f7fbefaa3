"""One NATS connection per process: core pub/sub for load metrics, JetStream for KV events.

The connection reconnects forever; publishing while disconnected is buffered
by nats-py (up to its pending limit) rather than raising into callers.
Stream creation is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import BadRequestError

from . import subjects
from .wire.kv_events_pb2 import KvEvent, LoadMetrics

log = logging.getLogger(__name__)

KvEventHandler = Callable[[KvEvent, int], Awaitable[None]]
"""Called with each KV event and its JetStream stream sequence."""
KvEventBytesHandler = Callable[[bytes, int], Awaitable[None]]
"""The same, before decoding: for a reader with its own view of the bytes (the KV index)."""

# KV events are state deltas. A starting router replays what the stream holds and asks each
# live worker whose earlier events are gone for a snapshot (Worker.KvEventsSince), so the stream
# only has to bridge short absences (a reconnect, a restart): a longer history costs
# nats-server memory (it indexes every message kept, ~140 bytes each) and a starting router a
# replay (~45k events/s through nats-py) that one snapshot per worker does faster.
KV_STREAM_MAX_AGE_SECONDS = 60.0
KV_STREAM_MAX_MSGS = 200_000
"""The most events the stream keeps (busy fleets reach it before the age limit): as many as
a starting router replays, beyond which it asks the workers instead."""


class Messaging:
    """Owns this process's NATS connection and JetStream context."""

    def __init__(self, servers: str | list[str], namespace: str, name: str = "tandem") -> None:
        self.servers = (
            [s.strip() for s in servers.split(",")] if isinstance(servers, str) else servers
        )
        self.namespace = namespace
        self.name = name
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._closing = False

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("Messaging.connect() was not called")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("Messaging.connect() was not called")
        return self._js

    async def connect(self, timeout: float = 10.0) -> None:
        async def on_disconnect() -> None:
            if not self._closing:  # a drain on close disconnects too: not news
                log.warning("nats disconnected; reconnecting")

        async def on_reconnect() -> None:
            log.info("nats reconnected to %s", self._nc.connected_url if self._nc else "?")

        async def on_error(exc: Exception) -> None:
            log.warning("nats error: %s", exc)

        self._nc = await nats.connect(
            servers=self.servers,
            name=self.name,
            connect_timeout=timeout,
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            error_cb=on_error,
        )
        self._js = self._nc.jetstream()

    async def close(self) -> None:
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception as exc:  # closing must not fail shutdown
                log.debug("nats drain failed: %s", exc)
        self._nc = None
        self._js = None

    # -- KV events -------------------------------------------------------------

    async def ensure_kv_stream(self) -> None:
        """Create (or keep) the KV event stream for this namespace."""
        config = StreamConfig(
            name=subjects.kv_stream(self.namespace),
            subjects=[subjects.kv_subjects_all(self.namespace)],
            retention=RetentionPolicy.LIMITS,
            max_age=KV_STREAM_MAX_AGE_SECONDS,
            max_msgs=KV_STREAM_MAX_MSGS,
        )
        try:
            await self.js.add_stream(config)
        except BadRequestError:
            await self.js.update_stream(config)  # exists with other limits

    async def publish_kv_event(self, event: KvEvent) -> None:
        """Publish one KV event; JetStream stores it (no per-event ack wait: ids reveal loss)."""
        await self.nc.publish(
            subjects.kv_subject(self.namespace, event.instance_id), event.SerializeToString()
        )

    async def subscribe_kv_events(
        self, handler: KvEventHandler, start_sequence: int | None = None
    ) -> Subscription:
        """Deliver every stored KV event (from `start_sequence`, or the beginning), then new ones."""

        async def on_bytes(data: bytes, stream_seq: int) -> None:
            await handler(KvEvent.FromString(data), stream_seq)

        return await self.subscribe_kv_event_bytes(on_bytes, start_sequence)

    async def subscribe_kv_event_bytes(
        self, handler: KvEventBytesHandler, start_sequence: int | None = None
    ) -> Subscription:
        """`subscribe_kv_events`, handing over each event's bytes undecoded."""
        await self.ensure_kv_stream()

        async def on_msg(msg: Msg) -> None:
            await handler(msg.data, msg.metadata.sequence.stream)

        if start_sequence:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_sequence
            )
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        return await self.js.subscribe(
            subjects.kv_subjects_all(self.namespace),
            cb=on_msg,
            ordered_consumer=True,
            stream=subjects.kv_stream(self.namespace),
            config=config,
        )

    # -- load metrics ----------------------------------------------------------

    async def publish_load(self, metrics: LoadMetrics) -> None:
        await self.nc.publish(
            subjects.load_subject(self.namespace, metrics.instance_id), metrics.SerializeToString()
        )

    async def subscribe_load(
        self, handler: Callable[[LoadMetrics], Awaitable[None]]
    ) -> Subscription:
        async def on_msg(msg: Msg) -> None:
            metrics = LoadMetrics()
            metrics.ParseFromString(msg.data)
            await handler(metrics)

        return await self.nc.subscribe(subjects.load_subjects_all(self.namespace), cb=on_msg)
