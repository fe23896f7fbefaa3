"""The worker process: one or more workers (`--num-workers`) sharing NATS and one etcd lease.

Each hosted worker is a `WorkerServer`: its own instance id, engine, gRPC and
/metrics ports, KV event stream and load reports. What they share is what a
process has once: the NATS connection (every worker publishes on its own
subjects), the etcd client and its lease (every registration is bound to it),
and the model card, checked and kept once.

One lease for the process: a process that dies takes all of its workers out
of etcd together when the lease's TTL runs out (10 s), and a SIGTERM revokes
it first, so routers drop every one of them at once, before any stops serving.

Start order: NATS (KV stream) -> etcd lease -> model card check and write ->
every worker (concurrently) -> model card keeper. Stop: every worker drains
(marked draining in etcd, in-flight requests finish, `--drain-timeout`), then
the lease is revoked, then every worker stops, then NATS closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tandem.runtime.discovery import Discovery
from tandem.runtime.etcd_client import ETCD_ERRORS
from tandem.runtime.gc_tuning import freeze_heap
from tandem.runtime.keys import model_key
from tandem.runtime.messaging import Messaging
from tandem.runtime.model_card import ModelCard
from tandem.runtime.startup import StartupError
from tandem.runtime.tasks import cancel_and_wait
from tandem.runtime.tracing import Tracing

from .config import WorkerConfig
from .server import Endpoints, WorkerServer

log = logging.getLogger("tandem.worker")


class WorkerHost:
    """Owns the process's NATS connection, etcd lease, model card and its `WorkerServer`s."""

    def __init__(self, config: WorkerConfig, engine_config: Any) -> None:
        self.config = config
        # One tracer provider (one exporter, one batch thread) for every hosted worker;
        # first, so a bad OTEL_* setting stops the start before anything is connected.
        self.tracing = Tracing.start("tandem-worker", config.otel_exporter)
        self.messaging = Messaging(
            config.nats, config.namespace, name=f"worker-{config.instance_id}"
        )
        self.discovery = Discovery(config.etcd, config.namespace)
        self.workers = [
            WorkerServer(
                config, engine_config, self.messaging, self.discovery, index, self.tracing.tracer
            )
            for index in range(config.num_workers)
        ]
        self._card_task: asyncio.Task[None] | None = None

    async def start(self) -> list[Endpoints]:
        await self.messaging.connect()
        await self.messaging.ensure_kv_stream()
        await self.discovery.start()
        card = self.workers[0].engine.model_card()  # every hosted engine has the same config
        await self._check_block_size(card)
        await self.discovery.register_model(card.name, card.to_dict())
        endpoints = await asyncio.gather(*(worker.start() for worker in self.workers))
        self._card_task = asyncio.create_task(self._keep_model_card(card), name="model-card")
        freeze_heap()  # what startup built (engines, grpc, modules) leaves every later scan
        if len(self.workers) > 1:
            log.info(
                "worker host ready workers=%d instance_ids=%s..%s",
                len(self.workers),
                self.workers[0].instance_id,
                self.workers[-1].instance_id,
            )
        return endpoints

    async def stop(self) -> None:
        # Drain first, while still registered: routers stop sending new work and
        # the frontend keeps the streams it has, so scaling down cuts none.
        await asyncio.gather(*(w.drain(self.config.drain_timeout) for w in self.workers))
        for worker in self.workers:
            worker.stop_accepting()
        await cancel_and_wait(self._card_task)
        await self.discovery.close()  # revokes the lease: routers drop every worker at once
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        await self.messaging.close()
        await asyncio.to_thread(self.tracing.shutdown)  # the last spans are exported too

    async def _check_block_size(self, card: ModelCard) -> None:
        """Refuse to start where the model is already served with KV blocks of another size.

        Routers hash a model's prompts with one block size, its workers'; a worker
        with another would never get a prefix hit. (Two such workers starting at
        the same moment both pass; routers then refuse the younger one.)
        """
        try:
            existing = await self.discovery.get_model_card(card.name)
        except ETCD_ERRORS as exc:
            log.warning("model card of %s unreadable, block size unchecked: %s", card.name, exc)
            return
        served = int((existing or {}).get("block_size") or 0)
        if served and served != card.block_size:
            raise StartupError(
                f"model {card.name} is served with KV blocks of {served} tokens, this worker's "
                f"--kv-cache-block-size is {card.block_size}: start it with "
                f"--kv-cache-block-size {served}"
            )

    async def _keep_model_card(self, card: ModelCard) -> None:
        """Write the model card back when it disappears.

        Every worker process of a model writes the same key under its own lease;
        etcd deletes it when the lease of the *last writer* ends, although other
        processes still serve the model. Each survivor puts it back at once.
        """
        key = model_key(self.config.namespace, card.name)
        value = card.to_dict()
        while True:
            try:
                async for resp in self.discovery.client.watch.watch(key):  # type: ignore[union-attr]
                    if any(event.type != 0 for event in resp.events):  # 0 = PUT
                        await self.discovery.register_model(card.name, value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd outage: the lease loop re-registers
                log.debug("model card watch interrupted: %s", exc)
                await asyncio.sleep(1.0)
