"""docs/metrics.md lists exactly the metrics the services export, with their types."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from tandem.frontend.metrics import FrontendMetrics
from tandem.planner.metrics import PlannerMetrics
from tandem.router.kv_event_follower import KvEventFollower
from tandem.router.metrics import RouterMetrics
from tandem.router.radix_index import RadixIndex
from tandem.worker.engine import EngineStats
from tandem.worker.metrics import WorkerMetrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
# A table row: | `tandem_...` | type | labels | meaning |
_ROW = re.compile(r"^\|\s*`(tandem_[a-z0-9_]+)`\s*\|\s*(counter|gauge|histogram)\s*\|", re.M)


def _exposed(registry: CollectorRegistry) -> dict[str, str]:
    """Metric name (as scraped: counters with `_total`) -> type, for every family in `registry`."""
    names = {}
    for family in registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        names[name] = family.type
    return names


def _code_metrics() -> dict[str, str]:
    router = RouterMetrics(CollectorRegistry())
    index = RadixIndex()
    # The index collector is registered when a KV router binds its index.
    router.bind(index, KvEventFollower(index, endpoint_of=lambda _worker: None))
    worker = WorkerMetrics(lambda: EngineStats(0, 0, 0, 0, 0, 0, 0.0))
    metrics: dict[str, str] = {}
    for registry in (
        FrontendMetrics(CollectorRegistry()).registry,
        router.registry,
        worker.registry,
        PlannerMetrics(CollectorRegistry()).registry,
    ):
        metrics.update(_exposed(registry))
    return metrics


def _documented() -> dict[str, str]:
    return dict(_ROW.findall(DOC.read_text()))


def test_every_exported_metric_is_documented_with_its_type() -> None:
    code, doc = _code_metrics(), _documented()
    missing = sorted(set(code) - set(doc))
    assert not missing, f"docs/metrics.md lacks {missing}"
    wrong = {name: (doc[name], kind) for name, kind in code.items() if doc[name] != kind}
    assert not wrong, f"docs/metrics.md types (doc, code) differ: {wrong}"


def test_every_documented_metric_exists() -> None:
    stale = sorted(set(_documented()) - set(_code_metrics()))
    assert not stale, f"docs/metrics.md names metrics no service exports: {stale}"
