"""A real OTLP trace receiver, run as its own process: `python -m tests.support.otlp_receiver OUT`.

It serves the OTLP trace service over gRPC (`TraceService/Export`) and over
HTTP (`POST /v1/traces`, protobuf), both with the `opentelemetry-proto`
types, on free loopback ports, and appends one JSON line per received span
to OUT: trace and span ids (hex), parent span id, name, the resource's
`service.name` and the protocol it came by. It prints
`otlp receiver grpc=PORT http=PORT` once both listen.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class SpanLog:
    """Owns the output file: one JSON line per span, flushed as it arrives."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", buffering=1)

    def write(self, request: trace_service_pb2.ExportTraceServiceRequest, protocol: str) -> None:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    record: dict[str, Any] = {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "service": attributes.get("service.name", ""),
                        "protocol": protocol,
                    }
                    self._file.write(json.dumps(record) + "\n")


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, spans: SpanLog) -> None:
        self._spans = spans

    async def Export(  # noqa: N802 - gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._spans.write(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


async def main(out: Path) -> None:
    spans = SpanLog(out)
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(spans), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def export(request: web.Request) -> web.Response:
        if request.content_type != "application/x-protobuf":
            return web.Response(status=415, text="protobuf only")
        message = trace_service_pb2.ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        spans.write(message, "http/protobuf")
        body = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = runner.addresses[0][1]
    print(f"otlp receiver grpc={grpc_port} http={http_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
