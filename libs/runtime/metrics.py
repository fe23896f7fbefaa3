"""Prometheus metrics: declared once per module, created per process, served on `/metrics`.

A service declares its metrics at module level in its `metrics.py`, in a
`MetricGroup` (one per component section of docs/metrics.md):

    WORKER = MetricGroup("worker", "Worker", labels=("model", "worker", "role"))
    REQUESTS = WORKER.counter("requests_total", "Ended requests.", ("finish_reason",))

and creates them at run time in the process's own registry with
`REQUESTS.create(registry)` (no global default registry, so tests can run
several services in one process). A collector that reads values at scrape
time builds its families with `SPEC.family(...)`. `python -m
tandem.runtime.metrics_doc` finds every group in every `metrics.py` and writes
docs/metrics.md from them; a test fails when the file and the code differ.

A group's `labels` are the labels every metric of it carries with one value
per process (a worker's model, instance id and role): the process gives
their values once, to its `LabelledRegistry`, which adds them at scrape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from .startup import binding

PREFIX = "tandem"
# Latency buckets from 1 ms to ~2 min: serving latencies span that range.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip

Kind = Literal["counter", "gauge", "histogram"]


def metric_name(component: str, name: str) -> str:
    """`metric_name("router", "kv_cache_hit_ratio")` -> `tandem_router_kv_cache_hit_ratio`."""
    return f"{PREFIX}_{component}_{name}"


@dataclass(frozen=True, slots=True, eq=False)
class MetricSpec:
    """One declared metric: its name as scraped, meaning and labels (a row of docs/metrics.md)."""

    kind: ClassVar[Kind]
    group: MetricGroup
    name: str
    """Full name as scraped (`tandem_worker_requests_total`; counters end in `_total`)."""
    doc: str
    """The HELP text, and the meaning docs/metrics.md gives."""
    labels: tuple[str, ...] = ()
    """Labels of this metric besides the group's per-process ones."""
    detail: str = ""
    """More for docs/metrics.md only: label values, when it exists, how it is read."""

    @property
    def all_labels(self) -> tuple[str, ...]:
        return (*self.group.labels, *self.labels)

    def _registry(self, registry: CollectorRegistry) -> CollectorRegistry:
        """`registry`, if it adds this metric's per-process labels (a plain one would not)."""
        given = registry.labels if isinstance(registry, LabelledRegistry) else {}
        if set(given) != set(self.group.labels):
            raise ValueError(
                f"{self.name} needs a registry labelled {self.group.labels} "
                f"(`registry_for({self.group.title!r} group, ...)`), not {tuple(given)}"
            )
        return registry

    @property
    def family_name(self) -> str:
        """The name prometheus_client takes (it adds `_total` to counters itself)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


@dataclass(frozen=True, slots=True, eq=False)
class CounterSpec(MetricSpec):
    kind: ClassVar[Kind] = "counter"

    def create(self, registry: CollectorRegistry) -> Counter:
        return Counter(self.family_name, self.doc, self.labels, registry=self._registry(registry))

    def family(self, value: float | None = None) -> CounterMetricFamily:
        """A family for a scrape-time collector: `value` when unlabelled, else `add_metric`."""
        labels = None if value is not None else self.labels
        return CounterMetricFamily(self.family_name, self.doc, value=value, labels=labels)


@dataclass(frozen=True, slots=True, eq=False)
class GaugeSpec(MetricSpec):
    kind: ClassVar[Kind] = "gauge"

    def create(self, registry: CollectorRegistry) -> Gauge:
        return Gauge(self.name, self.doc, self.labels, registry=self._registry(registry))

    def family(self, value: float | None = None) -> GaugeMetricFamily:
        """A family for a scrape-time collector: `value` when unlabelled, else `add_metric`."""
        labels = None if value is not None else self.labels
        return GaugeMetricFamily(self.name, self.doc, value=value, labels=labels)


@dataclass(frozen=True, slots=True, eq=False)
class HistogramSpec(MetricSpec):
    kind: ClassVar[Kind] = "histogram"
    buckets: tuple[float, ...] = LATENCY_BUCKETS

    def create(self, registry: CollectorRegistry) -> Histogram:
        return Histogram(
            self.name,
            self.doc,
            self.labels,
            registry=self._registry(registry),
            buckets=self.buckets,
        )

    def family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.doc, labels=self.labels)


@dataclass(eq=False)
class MetricGroup:
    """The metrics of one component declared in one module: one section of docs/metrics.md."""

    component: str
    """The name part after `tandem_`: every metric here is `tandem_{component}_*`."""
    title: str
    labels: tuple[str, ...] = ()
    """Labels every metric of the group carries, one value per process (`LabelledRegistry`)."""
    intro: str = ""
    """A paragraph docs/metrics.md prints above the table."""
    notes: str = ""
    """A paragraph docs/metrics.md prints below the table."""
    specs: list[MetricSpec] = field(default_factory=list)
    """Every metric declared in the group, in declaration order (the table's rows)."""

    def _add(self, spec: MetricSpec) -> None:
        if not spec.name.startswith(f"{PREFIX}_{self.component}_"):
            raise ValueError(f"{spec.name} is not named {PREFIX}_{self.component}_*")
        if any(s.name == spec.name for s in self.specs):
            raise ValueError(f"{spec.name} is declared twice")
        self.specs.append(spec)

    def counter(
        self, name: str, doc: str, labels: tuple[str, ...] = (), *, detail: str = ""
    ) -> CounterSpec:
        """A counter; `name` is given with the `_total` it is scraped with."""
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        spec = CounterSpec(self, metric_name(self.component, name), doc, labels, detail)
        self._add(spec)
        return spec

    def gauge(
        self, name: str, doc: str, labels: tuple[str, ...] = (), *, detail: str = ""
    ) -> GaugeSpec:
        spec = GaugeSpec(self, metric_name(self.component, name), doc, labels, detail)
        self._add(spec)
        return spec

    def histogram(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...] = (),
        *,
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
        detail: str = "",
    ) -> HistogramSpec:
        spec = HistogramSpec(
            self, metric_name(self.component, name), doc, labels, detail, buckets=buckets
        )
        self._add(spec)
        return spec


class LabelledRegistry(CollectorRegistry):
    """A registry whose every sample also carries `labels` (a process's model, worker, role)."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        super().__init__()
        self.labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            metric.samples = [
                s._replace(labels={**self.labels, **s.labels}) for s in metric.samples
            ]
            yield metric


def registry_for(group: MetricGroup, **values: str) -> CollectorRegistry:
    """A registry for `group`'s metrics with a value for each of its per-process labels."""
    if set(values) != set(group.labels):
        raise ValueError(f"{group.title} metrics need labels {group.labels}, got {sorted(values)}")
    if not values:
        return CollectorRegistry()
    return LabelledRegistry({name: values[name] for name in group.labels})


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


def declared_names(groups: Iterable[MetricGroup]) -> dict[str, Kind]:
    """Name -> kind of every metric declared in `groups`."""
    return {spec.name: spec.kind for group in groups for spec in group.specs}
