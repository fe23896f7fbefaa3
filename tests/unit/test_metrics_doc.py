"""docs/metrics.md is what the code declares, and the services export what they declare."""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client import CollectorRegistry
from tandem.frontend.metrics import FRONTEND, FrontendMetrics
from tandem.planner.metrics import PLANNER, PlannerMetrics
from tandem.router.kv_event_follower import KvEventFollower
from tandem.router.metrics import ROUTER, RouterMetrics
from tandem.router.radix_index import RadixIndex
from tandem.runtime import metrics_doc
from tandem.runtime.metrics import declared_names
from tandem.worker.engine import EngineStats
from tandem.worker.metrics import WORKER, WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
# What creates a metric; only libs/runtime/metrics.py (from a declared spec) may.
_CONSTRUCTORS = {
    "Counter", "Gauge", "Histogram", "Summary", "Info", "Enum",
    "CounterMetricFamily", "GaugeMetricFamily", "HistogramMetricFamily", "SummaryMetricFamily",
}  # fmt: skip


def test_docs_metrics_md_is_generated_from_the_code() -> None:
    expected = metrics_doc.render(metrics_doc.declared_groups())
    assert metrics_doc.DOC.read_text() == expected, (
        f"docs/metrics.md differs from the declared metrics: run `{metrics_doc.COMMAND}`"
    )


def test_the_generator_finds_metrics_modules_in_subpackages(tmp_path: Path) -> None:
    (tmp_path / "libs" / "runtime").mkdir(parents=True)
    (tmp_path / "libs" / "runtime" / "metrics.py").touch()
    for rel in ("worker/__init__.py", "worker/metrics.py", "worker/disagg/metrics.py",
                "notes/metrics.py"):  # fmt: skip
        (tmp_path / "services" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "services" / rel).touch()
    assert metrics_doc.metrics_modules(tmp_path) == [
        "tandem.runtime.metrics",
        "tandem.worker.disagg.metrics",
        "tandem.worker.metrics",
    ]


def _exposed(registry: CollectorRegistry) -> dict[str, str]:
    """Metric name (as scraped: counters with `_total`) -> type, for every family in `registry`."""
    names = {}
    for family in registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        names[name] = family.type
    return names


def test_the_services_export_exactly_the_metrics_they_declare() -> None:
    router = RouterMetrics(CollectorRegistry())
    index = RadixIndex()
    # The index collector is registered when a KV router binds its index.
    router.for_model("m").bind(index, KvEventFollower(index, endpoint_of=lambda _worker: None))
    worker = WorkerMetrics(
        lambda: EngineStats(0, 0, 0, 0, 0, 0, 0.0), model="m", instance_id="w", role="aggregated"
    )
    exported: dict[str, str] = {}
    for registry in (
        FrontendMetrics(CollectorRegistry()).registry,
        router.registry,
        worker.registry,
        PlannerMetrics("m").registry,
    ):
        exported.update(_exposed(registry))
    assert declared_names([FRONTEND, ROUTER, WORKER, PLANNER]) == exported


def test_per_process_labels_are_on_every_sample() -> None:
    worker = WorkerMetrics(
        lambda: EngineStats(8, 2, 1, 1, 0, 0, 0.5), model="m", instance_id="w1", role="decode"
    )
    worker.requests.labels("stop").inc()
    labels = {"model": "m", "worker": "w1", "role": "decode"}
    assert worker.registry.get_sample_value("tandem_worker_kv_usage_ratio", labels) == 0.25
    assert (
        worker.registry.get_sample_value(
            "tandem_worker_requests_total", {**labels, "finish_reason": "stop"}
        )
        == 1.0
    )


def test_no_module_creates_a_metric_that_is_not_declared() -> None:
    """Every metric comes from a `MetricGroup` spec, so the generator sees it."""
    offenders = []
    for directory in metrics_doc.package_dirs(ROOT).values():
        for path in sorted(directory.rglob("*.py")):
            if path == ROOT / "libs" / "runtime" / "metrics.py" or "wire" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "prometheus_client"
                ):
                    used = {alias.name for alias in node.names} & _CONSTRUCTORS
                    # Type hints are fine: a created metric is what they describe.
                    if used and not _only_in_annotations(path, used):
                        offenders.append(f"{path.relative_to(ROOT)} imports {sorted(used)}")
    assert not offenders, "\n".join(offenders)


def _only_in_annotations(path: Path, names: set[str]) -> bool:
    """True when `names` are never called in `path` (only used as types)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            return False
    return True
