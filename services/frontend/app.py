"""The frontend process: etcd discovery, NATS (kv routing), models, worker channels, HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

from tandem.runtime.discovery import Discovery
from tandem.runtime.messaging import Messaging
from tandem.runtime.prefill_queue import PrefillQueue
from tandem.runtime.tracing import Tracing

from .access import access_middleware
from .api_keys import ApiKeys
from .config import FrontendConfig
from .disagg import Disaggregation, DisaggSettings
from .generation import Generator
from .http_server import OpenAIServer
from .kserve.inference import KserveInference
from .kserve.server import KserveServer
from .kserve.service import InferenceService
from .metrics import FrontendMetrics
from .models import ModelRegistry
from .request_limits import ConcurrencyLimit
from .worker_client import WorkerClientPool

log = logging.getLogger("tandem.frontend")


class Frontend:
    """Owns every long-lived part of the frontend and starts/stops them in order."""

    def __init__(self, config: FrontendConfig) -> None:
        self.config = config
        # First: a bad OTEL_* setting stops the start before anything is connected.
        self.tracing = Tracing.start("tandem-frontend", config.otel_exporter)
        self.metrics = FrontendMetrics()
        self.discovery = Discovery(config.etcd, config.namespace)
        # Only the in-process kv router follows KV events and load over NATS.
        needs_nats = config.router_mode == "kv" and not config.router_url
        self.messaging = (
            Messaging(config.nats, config.namespace, name="tandem-frontend") if needs_nats else None
        )
        self.pool = WorkerClientPool()
        # Conditional disaggregation needs the in-process router (prefill workers routed
        # KV-aware) and NATS (the prefill queue's depth); without, decode workers prefill.
        self.disagg = (
            Disaggregation(
                DisaggSettings(config.max_local_prefill_length, config.max_prefill_queue_size),
                self.metrics,
                lambda model: self.models.prefill_router(model),
                PrefillQueue(self.messaging),
                self.discovery,
            )
            if self.messaging is not None
            else None
        )
        self.generator = Generator(self.pool, self.metrics, config.max_migrations, self.disagg)
        self.models = ModelRegistry(
            config,
            self.discovery,
            self.messaging,
            self.metrics.registry,
            on_worker_removed=self.generator.on_worker_removed,
        )
        self.api_keys = ApiKeys.load(config.api_key, config.api_key_file)
        self.limit = ConcurrencyLimit(config.max_concurrent_requests)
        self.server = OpenAIServer(
            self.models,
            self.generator,
            self.metrics,
            self.tracing.tracer,
            middlewares=(access_middleware(self.api_keys, self.limit, self.metrics),),
            max_body_bytes=config.max_body_bytes,
        )
        # The KServe v2 gRPC API: the same models, generator, keys, limit and metrics.
        self.kserve = (
            KserveServer(
                InferenceService(
                    KserveInference(
                        self.models, self.generator, self.metrics, self.limit, self.tracing.tracer
                    ),
                    self.api_keys,
                ),
                config.max_body_bytes,
            )
            if config.grpc_port
            else None
        )

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.http_host in ("0.0.0.0", "") else self.config.http_host
        return f"http://{host}:{self.server.port}"

    async def start(self) -> None:
        await self.discovery.start()
        if self.messaging is not None:
            await self.messaging.connect()
        await self.models.start()
        if self.disagg is not None:
            await self.disagg.start()
        await self.server.start(self.config.http_host, self.config.http_port)
        if self.kserve is not None:
            await self.kserve.start(self.config.http_host, self.config.grpc_port)
            log.info(
                "KServe gRPC inference API at %s:%d",
                self.config.http_host or "0.0.0.0",
                self.kserve.port,
            )
        log.info(
            "frontend ready at %s (router %s)",
            self.url,
            self.config.router_url or self.config.router_mode,
        )
        if self.api_keys:
            log.info("API keys required on /v1 (%d accepted)", len(self.api_keys))
        elif not _is_loopback(self.config.http_host):
            log.warning(
                "the API is open: any client that reaches %s:%d is served (no --api-key)",
                self.config.http_host or "0.0.0.0",
                self.server.port,
            )

    async def stop(self) -> None:
        steps = [self.server.stop, self.models.stop, self.pool.close]
        if self.disagg is not None:
            steps.insert(1, self.disagg.stop)
        if self.kserve is not None:
            steps.insert(0, self.kserve.stop)
        for step in steps:
            with contextlib.suppress(Exception):
                await step()
        if self.messaging is not None:
            with contextlib.suppress(Exception):
                await self.messaging.close()
        with contextlib.suppress(Exception):
            await self.discovery.close()
        # Last: the spans of requests that ended while stopping are exported too.
        await asyncio.to_thread(self.tracing.shutdown)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
