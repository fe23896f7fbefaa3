"""OpenTelemetry setup and context propagation (W3C traceparent).

One request is one trace: the frontend starts a span per HTTP request and
injects its context into gRPC metadata; the standalone router and the worker
extract it and parent their own spans on it. NATS messages carry the same
headers.

`Tracing.start(service_name, exporter)` gives a process its own
TracerProvider (never the global one: a process hosting several workers has
one, and tests run several services in one process). Exporters:
- `none` (the default): no spans are made, and a client's `traceparent` is
  still passed through to the worker unchanged;
- `console`: every span printed as JSON on stdout as it ends;
- `otlp`: spans batched and sent to an OTLP receiver, configured by the
  standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`),
  `OTEL_EXPORTER_OTLP_PROTOCOL` (or `..._TRACES_PROTOCOL`; `grpc`, the Python
  SDK's default, or `http/protobuf`), `OTEL_EXPORTER_OTLP_HEADERS`,
  `OTEL_BSP_*` for batching, and `OTEL_SERVICE_NAME` /
  `OTEL_RESOURCE_ATTRIBUTES` for the resource.
`shutdown()` flushes what is still batched; services call it when they stop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from .startup import StartupError

EXPORTERS = ("none", "console", "otlp")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")


def otlp_protocol(environ: Mapping[str, str] | None = None) -> str:
    """The OTLP protocol the standard variables choose (traces' own variable first)."""
    environ = os.environ if environ is None else environ
    raw = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if raw not in OTLP_PROTOCOLS:
        raise StartupError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={raw!r} is not supported: use one of "
            + ", ".join(OTLP_PROTOCOLS)
        )
    return raw


def _otlp_exporter() -> SpanExporter:
    # Imported here: a process that exports nothing loads neither gRPC's nor HTTP's exporter.
    # Both read their endpoint, headers and timeout from the OTEL_EXPORTER_OTLP_* variables.
    if otlp_protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpOTLPSpanExporter,
    )

    return HttpOTLPSpanExporter()


def _processor(exporter: str) -> SpanProcessor:
    if exporter == "console":
        return SimpleSpanProcessor(ConsoleSpanExporter())
    # Batched: exporting happens on the processor's thread, never on the event loop.
    return BatchSpanProcessor(_otlp_exporter())


class Tracing:
    """Owns one process's TracerProvider and its span processor."""

    def __init__(self, provider: TracerProvider | None, tracer: trace.Tracer | None) -> None:
        self._provider = provider
        self.tracer = tracer
        """None when spans are not exported: no per-request span cost."""

    @classmethod
    def start(cls, service_name: str, exporter: str) -> Tracing:
        """Tracing for `exporter`; `service_name` unless `OTEL_SERVICE_NAME` names one."""
        if exporter not in EXPORTERS:
            raise StartupError(
                f"unknown trace exporter {exporter!r}: use one of {', '.join(EXPORTERS)}"
            )
        if exporter == "none":
            return cls(None, None)
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
        # Resource.create also reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(_processor(exporter))
        return cls(provider, provider.get_tracer("tandem"))

    def shutdown(self) -> None:
        """Export what is still batched (bounded by the exporter's timeout) and stop."""
        if self._provider is not None:
            self._provider.shutdown()
            self._provider = None


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
