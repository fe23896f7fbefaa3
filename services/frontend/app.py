"""The frontend process: etcd discovery, NATS (kv routing), models, worker channels, HTTP API."""

from __future__ import annotations

import contextlib
import ipaddress
import logging

from tandem.runtime.discovery import Discovery
from tandem.runtime.messaging import Messaging
from tandem.runtime.tracing import tracer_for

from .access import access_middleware
from .api_keys import ApiKeys
from .config import FrontendConfig
from .generation import Generator
from .http_server import OpenAIServer
from .metrics import FrontendMetrics
from .models import ModelRegistry
from .request_limits import ConcurrencyLimit
from .worker_client import WorkerClientPool

log = logging.getLogger("tandem.frontend")


class Frontend:
    """Owns every long-lived part of the frontend and starts/stops them in order."""

    def __init__(self, config: FrontendConfig) -> None:
        self.config = config
        self.metrics = FrontendMetrics()
        self.discovery = Discovery(config.etcd, config.namespace)
        # Only the in-process kv router follows KV events and load over NATS.
        needs_nats = config.router_mode == "kv" and not config.router_url
        self.messaging = (
            Messaging(config.nats, config.namespace, name="tandem-frontend") if needs_nats else None
        )
        self.pool = WorkerClientPool()
        self.generator = Generator(self.pool, self.metrics, config.max_migrations)
        self.models = ModelRegistry(
            config,
            self.discovery,
            self.messaging,
            self.metrics.registry,
            on_worker_removed=self.generator.on_worker_removed,
        )
        tracer = tracer_for("tandem-frontend", config.otel_exporter)
        self.api_keys = ApiKeys.load(config.api_key, config.api_key_file)
        self.limit = ConcurrencyLimit(config.max_concurrent_requests)
        self.server = OpenAIServer(
            self.models,
            self.generator,
            self.metrics,
            tracer,
            middlewares=(access_middleware(self.api_keys, self.limit, self.metrics),),
            max_body_bytes=config.max_body_bytes,
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
        await self.server.start(self.config.http_host, self.config.http_port)
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
        for step in (self.server.stop, self.models.stop, self.pool.close):
            with contextlib.suppress(Exception):
                await step()
        if self.messaging is not None:
            with contextlib.suppress(Exception):
                await self.messaging.close()
        with contextlib.suppress(Exception):
            await self.discovery.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface
