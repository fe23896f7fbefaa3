"""One worker: an engine behind its own gRPC server, registered in etcd, reporting on NATS.

A `WorkerHost` (host.py) runs one or more of these in a process and gives
them the process's NATS connection and etcd lease. Start order: KV publisher
-> engine -> gRPC + /metrics -> etcd registration -> load reports; "worker
ready" is logged last. Stop order (after the host revoked the lease, so
routers dropped the worker): the gRPC server stops accepting and aborts what
is in flight, then the engine stops and the queued KV events are flushed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from tandem.runtime.discovery import Discovery
from tandem.runtime.grpc_util import start_server
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.messaging import Messaging
from tandem.runtime.metrics import serve_metrics
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
    """Owns one worker's engine, KV publisher, load reporter, gRPC and /metrics servers.

    `index` is its place in the process (`--num-workers`): it picks the instance
    id and, for fixed ports, the port.
    """

    def __init__(
        self,
        config: WorkerConfig,
        engine_config: Any,
        messaging: Messaging,
        discovery: Discovery,
        index: int = 0,
    ) -> None:
        self.config = config
        self.index = index
        self.instance_id = config.instance_ids[index]
        self.discovery = discovery
        self.log_extra = {"instance_id": self.instance_id}
        self.publisher = KvEventPublisher(
            self.instance_id, messaging, ring_size=config.kv_event_buffer
        )
        _, create_engine = load_engine(config.engine)
        self.engine: BaseEngine = create_engine(engine_config, self.publisher)
        self.metrics = WorkerMetrics(self.engine.stats)
        self.reporter = LoadReporter(
            self.instance_id,
            self.engine.stats,
            messaging,
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

    async def start(self) -> Endpoints:
        """Serve and register (the host's lease must be held and the model card checked)."""
        cfg = self.config
        self.publisher.start()
        await self.engine.start()
        self._grpc, port = await start_server(
            lambda server: worker_pb2_grpc.add_WorkerServicer_to_server(self.service, server),
            cfg.host,
            cfg.port_of(self.index),
        )
        self._http = await serve_metrics(
            self.metrics.registry, cfg.host, cfg.metrics_port_of(self.index)
        )
        metrics_port = self._http.addresses[0][1]
        endpoints = Endpoints(f"{cfg.endpoint_host}:{port}", f"{cfg.endpoint_host}:{metrics_port}")
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
        await self.discovery.register_instance(self.info)
        self.service.ready = True
        self.reporter.start()
        log.info(
            "worker ready instance_id=%s endpoint=%s metrics=%s engine=%s model=%s",
            self.instance_id,
            endpoints.grpc,
            endpoints.metrics,
            cfg.engine,
            self.engine.model_name,
        )
        return endpoints

    def stop_accepting(self) -> None:
        """Refuse new requests (UNAVAILABLE: the frontend tries another worker)."""
        self.service.ready = False

    async def stop(self) -> None:
        """Stop serving; the host revoked the lease (or unregistered it) before."""
        log.info("worker stopping", extra=self.log_extra)
        self.stop_accepting()
        await self.reporter.stop()
        if self._grpc is not None:
            await self._grpc.stop(self.config.shutdown_grace_seconds)
        await self.engine.stop()
        await self.publisher.stop()
        if self._http is not None:
            await self._http.cleanup()
        log.info("worker stopped", extra=self.log_extra)
