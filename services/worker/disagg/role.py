"""One worker's disaggregated role: what `WorkerServer` builds for `prefill` and `decode` workers.

- `decode`: a `DecodeCoordinator` (requests with `remote_prefill` are parked
  and their jobs published; with discovery, a `PrefillPool` watch moves the
  jobs of a prefill worker that left) and the `Disagg` gRPC service that takes
  the prefill workers' completions, on the worker's gRPC server.
- `prefill`: a `PrefillJobRunner` on this worker's JetStream consumer.
- `aggregated`: nothing (`for_role` returns None); a request that names a
  remote prefill is prefilled here.
"""

from __future__ import annotations

import logging

import grpc
from opentelemetry.trace import Tracer
from tandem.runtime.discovery import Discovery
from tandem.runtime.messaging import Messaging
from tandem.runtime.prefill_queue import PrefillQueue
from tandem.runtime.startup import StartupError
from tandem.runtime.wire import disagg_pb2, disagg_pb2_grpc

from ..engine import BaseEngine
from ..kv_transfer.transport import BaseKvTransport
from .decode_side import DecodeCoordinator, DisaggMetrics, TransferGate
from .engine_hooks import DisaggEngine
from .prefill_pool import PrefillPool
from .prefill_side import PrefillJobRunner

log = logging.getLogger(__name__)


class DisaggService(disagg_pb2_grpc.DisaggServicer):
    """`tandem.v1.Disagg` on a decode worker: prefill workers report finished jobs here."""

    def __init__(self, coordinator: DecodeCoordinator) -> None:
        self.coordinator = coordinator

    async def CompletePrefill(  # noqa: N802 - gRPC method name
        self, request: disagg_pb2.PrefillCompletion, context: grpc.aio.ServicerContext
    ) -> disagg_pb2.PrefillCompletionAck:
        return disagg_pb2.PrefillCompletionAck(accepted=await self.coordinator.complete(request))


class DisaggRole:
    """Owns a worker's decode coordinator or prefill job runner (whichever its role needs)."""

    def __init__(
        self,
        role: str,
        decode: DecodeCoordinator | None = None,
        prefill: PrefillJobRunner | None = None,
    ) -> None:
        self.role = role
        self.decode = decode
        self.prefill = prefill

    @classmethod
    def for_role(
        cls,
        role: str,
        *,
        instance_id: str,
        engine: BaseEngine,
        messaging: Messaging,
        metrics: DisaggMetrics,
        remote_prefill_timeout: float,
        transport: BaseKvTransport | None = None,
        gate: TransferGate | None = None,
        tracer: Tracer | None = None,
        discovery: Discovery | None = None,
    ) -> DisaggRole | None:
        """The role's parts, or None for `aggregated`; StartupError for an engine without the
        hooks (a prefill or decode worker needs `DisaggEngine`)."""
        if role == "aggregated":
            return None
        if not isinstance(engine, DisaggEngine):
            raise StartupError(
                f"--disaggregation-mode {role} needs an engine that serves it; "
                f"{type(engine).__name__} does not (use --engine mocker, or aggregated)"
            )
        queue = PrefillQueue(messaging)
        if role == "decode":
            pool = None
            if discovery is not None:
                view = discovery.instance_set("worker", engine.model_name)
                pool = PrefillPool(view, queue, engine.model_name)
            coordinator = DecodeCoordinator(
                instance_id,
                engine.model_name,
                engine,
                queue,
                metrics,
                remote_prefill_timeout,
                gate=gate,
                pool=pool,
            )
            return cls(role, decode=coordinator)
        runner = PrefillJobRunner(
            instance_id,
            engine.model_name,
            engine,
            engine.block_size,
            queue,
            transport if transport is not None else engine.kv_transport(),
            metrics,
            tracer=tracer,
        )
        return cls(role, prefill=runner)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        if self.decode is not None:
            disagg_pb2_grpc.add_DisaggServicer_to_server(DisaggService(self.decode), server)

    async def start(self, endpoint: str) -> None:
        if self.decode is not None:
            self.decode.endpoint = endpoint
            await self.decode.start()
        if self.prefill is not None:
            await self.prefill.start()
        log.info("disaggregated role=%s endpoint=%s", self.role, endpoint)

    async def stop(self) -> None:
        if self.prefill is not None:
            await self.prefill.stop()
        if self.decode is not None:
            await self.decode.close()
