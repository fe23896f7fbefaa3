"""OpenTelemetry setup and context propagation (W3C traceparent).

One request is one trace: the frontend starts a span per HTTP request and
injects its context into gRPC metadata; the worker extracts it and parents
its own span on it. NATS messages carry the same headers.

`setup_tracing` installs a TracerProvider per process. With
`--otel-exporter console` every request gets a span in the frontend and in the
worker, printed as JSON on stdout; with the default `none` no spans are made,
and a client's `traceparent` is still passed through to the worker unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

EXPORTERS = ("none", "console")


def setup_tracing(service_name: str, exporter: str = "none") -> trace.Tracer:
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown trace exporter {exporter!r}; choose one of {EXPORTERS}")
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer(service_name)


def tracer_for(service_name: str, exporter: str) -> trace.Tracer | None:
    """A tracer when spans are exported; None (no per-request span cost) when they are not."""
    return None if exporter == "none" else setup_tracing(service_name, exporter)


def context_to_metadata() -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata (or HTTP/NATS header) pairs."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return list(carrier.items())


def context_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str] | None):  # type: ignore[no-untyped-def]
    """A context to parent spans on, from gRPC metadata or HTTP headers."""
    if metadata is None:
        return extract({})
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    carrier = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in items}
    return extract(carrier)
