"""One worker: an engine behind its own gRPC server, registered in etcd, reporting on NATS.

A `WorkerHost` (host.py) runs one or more of these in a process and gives
them the process's NATS connection and etcd lease. Start order: KV publisher
-> engine -> gRPC + /metrics -> etcd registration -> load reports; "worker
ready" is logged last. On SIGTERM the worker first drains (`drain`: marked
draining in etcd, in-flight requests finish). Stop order (after the host
revoked the lease, so routers dropped the worker): the gRPC server stops
accepting and aborts what is still in flight, then the engine stops and the
queued KV events are flushed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.trace import Tracer
from tandem.runtime.discovery import Discovery
from tandem.runtime.grpc_util import start_server
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.messaging import Messaging
from tandem.runtime.metrics import serve_metrics
from tandem.runtime.wire import worker_pb2_grpc

from .config import WorkerConfig
from .disagg.role import DisaggRole
from .engine import BaseEngine
from .grpc_service import WorkerService
from .kv_publisher import KvEventPublisher
from .kv_transfer.plane import KvPoolOwner, plane_for_worker
from .load_reporter import LoadReporter
from .metrics import WorkerMetrics
from .registry import load_engine

log = logging.getLogger("tandem.worker")
COMPONENT = "worker"
# A draining worker leaves once nothing has been in flight for this long: routers
# that picked it just before they saw the flag have sent their requests by then,
# and the last outputs of finished requests have been written.
_DRAIN_QUIET_SECONDS = 0.3
_DRAIN_POLL_SECONDS = 0.05


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
        tracer: Tracer | None = None,
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
        self.metrics = WorkerMetrics(
            self.engine.stats,
            model=self.engine.model_name,
            instance_id=self.instance_id,
            role=config.disaggregation_mode,
            kvbm_stats=self.engine.kvbm_stats,
        )
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
            tracer=tracer,
        )
        # The prefill or decode role's parts (services/worker/disagg/); None when aggregated.
        # The KV data plane of a torch prefill/decode worker (kv_transfer/); None otherwise.
        self.kv_plane = plane_for_worker(
            config.disaggregation_mode,
            config.kv_transfer,
            self.instance_id,
            config.namespace,
            discovery.client,
            self.engine,
        )
        self.disagg = DisaggRole.for_role(
            config.disaggregation_mode,
            instance_id=self.instance_id,
            engine=self.engine,
            messaging=messaging,
            metrics=self.metrics,
            remote_prefill_timeout=config.remote_prefill_timeout,
            transport=self.kv_plane,
            gate=self.kv_plane.receiver if self.kv_plane else None,
            tracer=self.service.tracer,
            discovery=discovery,
        )
        self.service.remote_prefill = self.disagg.decode if self.disagg else None
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self.info: InstanceInfo | None = None

    async def start(self) -> Endpoints:
        """Serve and register (the host's lease must be held and the model card checked)."""
        cfg = self.config
        self.publisher.start()
        await self.engine.start()
        if self.kv_plane is not None:
            assert isinstance(self.engine, KvPoolOwner)
            self.kv_plane.start(self.engine.kv_pool())  # NIXL registers the KV memory here
        self._grpc, port = await start_server(self._add_services, cfg.host, cfg.port_of(self.index))
        self._http = await serve_metrics(
            self.metrics.registry, cfg.host, cfg.metrics_port_of(self.index)
        )
        metrics_port = self._http.addresses[0][1]
        endpoints = Endpoints(f"{cfg.endpoint_host}:{port}", f"{cfg.endpoint_host}:{metrics_port}")
        if self.kv_plane is not None:
            await self.kv_plane.publish(self.discovery, endpoints.grpc)
        if self.disagg is not None:
            await self.disagg.start(endpoints.grpc)
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

    async def drain(self, timeout: float) -> None:
        """Mark this worker draining in etcd and wait (at most `timeout` s) for its requests to end.

        It keeps serving meanwhile: a request a router picked before it saw the
        flag is served too, which is why the worker waits for a quiet period
        with nothing in flight rather than for the first moment of it.
        """
        if self.info is None or timeout <= 0:
            return
        self.info = dataclasses.replace(self.info, draining=True)
        started = time.monotonic()
        await self.discovery.register_instance(self.info)
        log.info(
            "worker draining in_flight=%d timeout=%.1fs",
            self.service.num_in_flight,
            timeout,
            extra=self.log_extra,
        )
        quiet_since: float | None = None
        while (elapsed := time.monotonic() - started) < timeout:
            if self.service.num_in_flight:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = elapsed
            elif elapsed - quiet_since >= _DRAIN_QUIET_SECONDS:
                log.info("worker drained in %.2fs", elapsed, extra=self.log_extra)
                return
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        log.warning(
            "worker drain timed out after %.1fs with %d requests in flight; they move to "
            "other workers",
            timeout,
            self.service.num_in_flight,
            extra=self.log_extra,
        )

    def _add_services(self, server: grpc.aio.Server) -> None:
        worker_pb2_grpc.add_WorkerServicer_to_server(self.service, server)
        if self.disagg is not None:
            self.disagg.add_to_server(server)
        if self.kv_plane is not None:
            self.kv_plane.add_to_server(server)

    def stop_accepting(self) -> None:
        """Refuse new requests (UNAVAILABLE: the frontend tries another worker)."""
        self.service.ready = False

    async def stop(self) -> None:
        """Stop serving; the host revoked the lease (or unregistered it) before."""
        log.info("worker stopping", extra=self.log_extra)
        self.stop_accepting()
        await self.reporter.stop()
        if self.disagg is not None:
            await self.disagg.stop()  # no new prefill jobs; this worker's waits withdrawn
        if self._grpc is not None:
            await self._grpc.stop(self.config.shutdown_grace_seconds)
        if self.kv_plane is not None:
            await self.kv_plane.close()
        await self.engine.stop()
        await self.publisher.stop()
        if self._http is not None:
            await self._http.cleanup()
        log.info("worker stopped", extra=self.log_extra)
