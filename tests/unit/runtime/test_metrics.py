"""Metrics: declared in groups, created per registry, per-process labels added, served on /metrics."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from tandem.runtime.metrics import MetricGroup, registry_for, serve_metrics

GROUP = MetricGroup("worker", "Worker (test)", labels=("model", "worker"))
REQUESTS = GROUP.counter("requests_total", "Requests.", ("finish",))
LATENCY = GROUP.histogram("prefill_latency_seconds", "Prefill latency.")
INFLIGHT = MetricGroup("frontend", "Frontend (test)").gauge("inflight", "In flight.")


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


async def test_metrics_and_health_are_served_with_the_process_labels() -> None:
    registry = registry_for(GROUP, model="m", worker="w1")
    REQUESTS.create(registry).labels("stop").inc(3)
    LATENCY.create(registry).observe(0.02)
    runner = await serve_metrics(registry, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        # Prometheus text sorts a sample's labels by name.
        assert 'tandem_worker_requests_total{finish="stop",model="m",worker="w1"} 3.0' in text
        assert (
            'tandem_worker_prefill_latency_seconds_bucket{le="0.03",model="m",worker="w1"} 1.0'
            in text
        )
        status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/health")
        assert status == 200 and '"ok"' in body
    finally:
        await runner.cleanup()


def test_each_registry_has_its_own_metrics() -> None:
    a, b = registry_for(INFLIGHT.group), registry_for(INFLIGHT.group)
    INFLIGHT.create(a).set(1)
    INFLIGHT.create(b).set(2)  # no clash: no global default registry
    assert a.get_sample_value("tandem_frontend_inflight") == 1
    assert b.get_sample_value("tandem_frontend_inflight") == 2


def test_declarations_are_checked() -> None:
    group = MetricGroup("planner", "Planner (test)", labels=("model",))
    group.gauge("desired", "Desired.")
    with pytest.raises(ValueError, match="declared twice"):
        group.gauge("desired", "Again.")
    with pytest.raises(ValueError, match="must end in _total"):
        group.counter("events", "Events.")
    with pytest.raises(ValueError, match="need labels"):
        registry_for(group)


def test_a_metric_is_only_created_where_its_per_process_labels_are_added() -> None:
    with pytest.raises(ValueError, match="needs a registry labelled"):
        REQUESTS.create(registry_for(INFLIGHT.group))
    with pytest.raises(ValueError, match="needs a registry labelled"):
        INFLIGHT.create(registry_for(GROUP, model="m", worker="w"))
