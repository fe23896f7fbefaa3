"""The worker process: one engine behind gRPC, registered in etcd, reporting on NATS.

Start order: NATS (KV stream) -> engine -> gRPC + /metrics -> etcd
registration -> load reports; "worker ready" is logged last. Stop order on
SIGTERM is the reverse where it matters: the lease is revoked first (routers
drop this worker), then the gRPC server stops accepting and aborts what is in
flight, then the engine stops and the queued KV events are flushed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from tandem.runtime.discovery import Discovery
from tandem.runtime.etcd_client import ETCD_ERRORS
from tandem.runtime.gc_tuning import freeze_heap
from tandem.runtime.grpc_util import start_server
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.keys import model_key
from tandem.runtime.messaging import Messaging
from tandem.runtime.metrics import serve_metrics
from tandem.runtime.model_card import ModelCard
from tandem.runtime.startup import StartupError
from tandem.runtime.tasks import cancel_and_wait
from tandem.runtime.tracing import tracer_for
from tandem.runtime.wire import worker_pb2_grpc

from .config import WorkerConfig
from .engine import BaseEngine
from .grpc_service import WorkerService
from .kv_publisher import KvEventPublisher
from .load_reporter import LoadReporter
from .metrics import WorkerMetrics
from .registry import load_engine

log = logging.getLogger("tandem.worker")
COMPONENT = "worker"


@dataclass(frozen=True, slots=True)
class Endpoints:
    grpc: str
    metrics: str


class WorkerServer:
    """Owns the worker's engine, servers, registrations and background tasks."""

    def __init__(self, config: WorkerConfig, engine_config: Any) -> None:
        self.config = config
        self.engine_config = engine_config
        self.instance_id = config.instance_id
        self.messaging = Messaging(config.nats, config.namespace, name=f"worker-{self.instance_id}")
        self.discovery = Discovery(config.etcd, config.namespace)
        self.publisher = KvEventPublisher(
            self.instance_id, self.messaging, ring_size=config.kv_event_buffer
        )
        _, create_engine = load_engine(config.engine)
        self.engine: BaseEngine = create_engine(engine_config, self.publisher)
        self.metrics = WorkerMetrics(self.engine.stats)
        self.reporter = LoadReporter(
            self.instance_id,
            self.engine.stats,
            self.messaging,
            interval=config.load_report_interval,
        )
        self.service = WorkerService(
            self.instance_id,
            self.engine,
            self.publisher,
            self.metrics,
            self.reporter.poke,
            tracer=tracer_for("tandem-worker", config.otel_exporter),
        )
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self.info: InstanceInfo | None = None
        self._card_task: asyncio.Task[None] | None = None

    async def start(self) -> Endpoints:
        cfg = self.config
        await self.messaging.connect()
        await self.messaging.ensure_kv_stream()
        self.publisher.start()
        await self.engine.start()

        self._grpc, port = await start_server(
            lambda server: worker_pb2_grpc.add_WorkerServicer_to_server(self.service, server),
            cfg.host,
            cfg.port,
        )
        self._http = await serve_metrics(self.metrics.registry, cfg.host, cfg.metrics_port)
        metrics_port = self._http.addresses[0][1]
        endpoints = Endpoints(f"{cfg.endpoint_host}:{port}", f"{cfg.endpoint_host}:{metrics_port}")

        await self.discovery.start()
        card = self.engine.model_card()
        await self._check_block_size(card)
        self.info = InstanceInfo(
            instance_id=self.instance_id,
            component=COMPONENT,
            endpoint=endpoints.grpc,
            model=self.engine.model_name,
            role=cfg.disaggregation_mode,  # type: ignore[arg-type]
            block_size=self.engine.block_size,
            total_blocks=self.engine.total_blocks,
            started_at=time.time(),
        )
        await self.discovery.register_model(card.name, card.to_dict())
        await self.discovery.register_instance(self.info)
        self._card_task = asyncio.create_task(self._keep_model_card(card), name="model-card")
        freeze_heap()  # what startup built (engine, grpc, modules) leaves every later scan
        self.service.ready = True
        self.reporter.start()
        log.info(
            "worker ready instance_id=%s endpoint=%s metrics=%s engine=%s model=%s",
            self.instance_id,
            endpoints.grpc,
            endpoints.metrics,
            cfg.engine,
            card.name,
        )
        return endpoints

    async def stop(self) -> None:
        log.info("worker stopping", extra={"instance_id": self.instance_id})
        self.service.ready = False
        await cancel_and_wait(self._card_task)
        await self.discovery.close()  # revokes the lease: routers drop us at once
        await self.reporter.stop()
        if self._grpc is not None:
            await self._grpc.stop(self.config.shutdown_grace_seconds)
        await self.engine.stop()
        await self.publisher.stop()
        if self._http is not None:
            await self._http.cleanup()
        await self.messaging.close()
        log.info("worker stopped", extra={"instance_id": self.instance_id})

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

        Every worker of a model writes the same key under its own lease; etcd
        deletes it when the lease of the *last writer* ends, although other
        workers still serve the model. Each survivor puts it back at once.
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
