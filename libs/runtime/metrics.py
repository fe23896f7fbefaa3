"""Prometheus metrics: one registry per process, names prefixed `tandem_{component}_`.

Each service builds its metrics from its own `CollectorRegistry` (no global
default registry, so tests can run several services in one process) and
serves them on `/metrics` with `metrics_handler` or `serve_metrics`.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .startup import binding

PREFIX = "tandem"
# Latency buckets from 1 ms to ~2 min: serving latencies span that range.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip


def metric_name(component: str, name: str) -> str:
    """`metric_name("router", "kv_cache_hit_ratio")` -> `tandem_router_kv_cache_hit_ratio`."""
    return f"{PREFIX}_{component}_{name}"


class MetricsFactory:
    """Creates metrics named `tandem_{component}_*` in one registry."""

    def __init__(self, component: str, registry: CollectorRegistry | None = None) -> None:
        self.component = component
        self.registry = registry if registry is not None else CollectorRegistry()

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        # prometheus_client appends `_total` itself; accept names written either way.
        return Counter(
            metric_name(self.component, name.removesuffix("_total")),
            doc,
            labels,
            registry=self.registry,
        )

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(metric_name(self.component, name), doc, labels, registry=self.registry)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> Histogram:
        return Histogram(
            metric_name(self.component, name), doc, labels, registry=self.registry, buckets=buckets
        )


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def metrics_handler(registry: CollectorRegistry):  # type: ignore[no-untyped-def]
    """An aiohttp handler serving `registry` in Prometheus text format."""

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=render(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handle


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """A small HTTP server with `/metrics` (and `/health`) for services that have no HTTP API."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/health", _health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with binding("the metrics server", host, port):
        await web.TCPSite(runner, host, port).start()
    return runner
