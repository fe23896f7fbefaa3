"""Benchmark: what metrics labels and span export cost a request and a scrape (not a test).

Two figures, each A/B alternated in the same run (rounds of A then B, the
median of the rounds reported), timed with this thread's CPU time so other
work on the cores counts less:

- a worker's `/metrics` render, its registry plain (no per-process labels)
  against labelled (`model`, `worker`, `role` added at scrape by
  `LabelledRegistry`), with every worker metric present;
- the request-path cost of one span (start, two attributes, end) with no
  tracer, the console exporter's processor with its output discarded, and
  the OTLP path (`BatchSpanProcessor`: queued for the export thread, which
  here hands batches to an in-memory exporter instead of the network).

    python bench/observability_overhead.py [--rounds 9] [--scrapes 2000] [--spans 20000]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Tracer
from prometheus_client import CollectorRegistry
from tandem.runtime.metrics import LabelledRegistry, render
from tandem.worker.engine import EngineStats
from tandem.worker.metrics import WorkerMetrics

Clock = time.thread_time


def worker_registry(labelled: bool) -> CollectorRegistry:
    metrics = WorkerMetrics(
        lambda: EngineStats(16384, 900, 300, 24, 3, 2048, 0.42, 5, 0.03, 0.01),
        model="SmolLM2-135M-Instruct",
        instance_id="0123456789ab",
        role="aggregated",
    )
    for reason in ("stop", "length", "abort"):
        metrics.requests.labels(reason).inc(10)
    for seconds in (0.01, 0.2, 3.0):
        metrics.prefill_latency.observe(seconds)
        metrics.request_latency.observe(seconds * 10)
    if labelled:
        return metrics.registry
    plain = CollectorRegistry()
    assert isinstance(metrics.registry, LabelledRegistry)
    for collector in list(metrics.registry._collector_to_names):
        plain.register(collector)
    return plain


def time_per_call(fn: Callable[[], object], calls: int) -> float:
    started = Clock()
    for _ in range(calls):
        fn()
    return (Clock() - started) / calls


class _Discard(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        return SpanExportResult.SUCCESS


def tracers() -> dict[str, tuple[Tracer | None, TracerProvider | None]]:
    console = TracerProvider()
    console.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=io.StringIO())))
    batch = TracerProvider()
    batch.add_span_processor(BatchSpanProcessor(_Discard()))
    return {
        "none": (None, None),
        "console": (console.get_tracer("bench"), console),
        "otlp (batch)": (batch.get_tracer("bench"), batch),
    }


def one_span(tracer: Tracer | None) -> Callable[[], object]:
    def run() -> object:
        if tracer is None:
            return None
        span = tracer.start_span("Worker.Generate")
        span.set_attribute("tandem.request_id", "r")
        span.set_attribute("tandem.finish_reason", "stop")
        span.end()
        return span

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--scrapes", type=int, default=2000)
    parser.add_argument("--spans", type=int, default=20000)
    args = parser.parse_args()

    registries = {"plain": worker_registry(False), "labelled": worker_registry(True)}
    scrape: dict[str, list[float]] = {name: [] for name in registries}
    chosen = tracers()
    spans: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(args.rounds):
        for name, registry in registries.items():
            scrape[name].append(time_per_call(lambda r=registry: render(r), args.scrapes))
        for name, (tracer, _) in chosen.items():
            spans[name].append(time_per_call(one_span(tracer), args.spans))
    for _, provider in chosen.values():
        if provider is not None:
            provider.shutdown()

    size = {name: len(render(r)) for name, r in registries.items()}
    print(f"{'worker /metrics render':<28}{'µs (median)':>12}{'bytes':>8}")
    for name, times in scrape.items():
        print(f"  {name:<26}{statistics.median(times) * 1e6:>12.1f}{size[name]:>8}")
    print(f"{'one span on a request path':<28}{'µs (median)':>12}")
    for name, times in spans.items():
        print(f"  {name:<26}{statistics.median(times) * 1e6:>12.2f}")


if __name__ == "__main__":
    main()
