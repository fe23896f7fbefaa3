"""`python -m tandem.router` / `tandem router`: the standalone KV-aware Router gRPC service."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Sequence

from tandem.runtime.config import parse_config
from tandem.runtime.discovery import Discovery
from tandem.runtime.gc_tuning import freeze_heap, tune_gc
from tandem.runtime.grpc_util import start_server
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.logs import setup_logging
from tandem.runtime.messaging import Messaging
from tandem.runtime.metrics import serve_metrics
from tandem.runtime.service_main import run_service
from tandem.runtime.tracing import Tracing
from tandem.runtime.wire import router_pb2_grpc

from .config import RouterConfig
from .metrics import RouterMetrics
from .model_routers import ModelRouters
from .service import RouterService

log = logging.getLogger("tandem.router")
COMPONENT = "router"


def _advertised_host(host: str) -> str:
    return socket.gethostname() if host in ("0.0.0.0", "::", "") else host


async def serve(config: RouterConfig, stop: asyncio.Event, ready: asyncio.Event) -> None:
    instance_id = f"router-{uuid.uuid4().hex[:8]}"
    messaging = Messaging(config.nats, config.namespace, name=instance_id)
    discovery = Discovery(config.etcd, config.namespace)
    await messaging.connect()
    await discovery.start()
    metrics = RouterMetrics()
    routers = ModelRouters(config, discovery, messaging=messaging, metrics=metrics)
    tracing = Tracing.start("tandem-router", config.otel_exporter)
    service = RouterService(routers, model=config.model, tracer=tracing.tracer)
    await service.start()

    server, port = await start_server(
        lambda s: router_pb2_grpc.add_RouterServicer_to_server(service, s), config.host, config.port
    )
    http = (
        await serve_metrics(metrics.registry, config.host, config.metrics_port)
        if config.metrics_port
        else None
    )
    endpoint = f"{_advertised_host(config.host)}:{port}"
    await discovery.register_instance(
        InstanceInfo(instance_id, COMPONENT, endpoint, model=config.model, started_at=time.time())
    )
    log.info(
        "router ready instance_id=%s endpoint=%s mode=%s models=%d",
        instance_id,
        endpoint,
        config.router_mode,
        len(routers.routers()),
    )
    freeze_heap()  # the routers' indexes as rebuilt at start leave every later collection
    ready.set()
    try:
        await stop.wait()
    finally:
        log.info("router stopping")
        await discovery.close()
        await server.stop(2)
        await routers.close()
        if http is not None:
            await http.cleanup()
        await messaging.close()
        await asyncio.to_thread(tracing.shutdown)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(RouterConfig, argv, prog="tandem router")
    setup_logging(config.log_level, component=COMPONENT)
    tune_gc()  # a router service handles a message per KV event and per route, as a frontend does
    return run_service(COMPONENT, lambda stop, ready: serve(config, stop, ready))


if __name__ == "__main__":
    raise SystemExit(main())
