"""Metrics: `tandem_{component}_*` names in a per-process registry, served on /metrics and /health."""

from __future__ import annotations

import asyncio
import urllib.request

from tandem.runtime.metrics import MetricsFactory, serve_metrics


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


async def test_metrics_and_health_are_served() -> None:
    factory = MetricsFactory("worker")
    factory.counter("requests_total", "Requests.", ("finish",)).labels("stop").inc(3)
    factory.histogram("prefill_latency_seconds", "Prefill latency.").observe(0.02)
    runner = await serve_metrics(factory.registry, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'tandem_worker_requests_total{finish="stop"} 3.0' in text
        assert "tandem_worker_prefill_latency_seconds_bucket" in text
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/health")
        assert status == 200 and '"ok"' in body
    finally:
        await runner.cleanup()


def test_each_factory_has_its_own_registry() -> None:
    a, b = MetricsFactory("frontend"), MetricsFactory("frontend")
    a.gauge("inflight", "In flight.").set(1)
    b.gauge("inflight", "In flight.").set(2)  # no clash: no global default registry
    assert a.registry.get_sample_value("tandem_frontend_inflight") == 1
    assert b.registry.get_sample_value("tandem_frontend_inflight") == 2
