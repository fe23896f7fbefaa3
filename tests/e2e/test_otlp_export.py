"""Traces leave the process: one request is one trace at a real OTLP receiver, from every hop.

The receiver is its own process serving the OTLP trace service over gRPC and
HTTP (`tests/support/otlp_receiver.py`). The services are configured only by
the standard `OTEL_*` variables: the worker and the standalone router export
over gRPC, the frontend over HTTP/protobuf.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tandem.launcher.local_infra import LocalInfra, free_port

from tests.e2e.openai_cluster import MODEL, Cluster, post
from tests.support.processes import ServiceProcess, infra_flags

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class Receiver:
    """The OTLP receiver process and the spans it has written."""

    def __init__(self, log_dir: Path, out: Path) -> None:
        self.out = out
        self.proc = ServiceProcess("tests.support.otlp_receiver", [str(out)], log_dir)
        self.proc.wait_log("otlp receiver grpc=", timeout=30)
        found = re.search(r"grpc=(\d+) http=(\d+)", self.proc.log_text())
        assert found is not None
        self.grpc_port, self.http_port = int(found.group(1)), int(found.group(2))

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [s for s in map(json.loads, lines) if s["trace_id"] == trace_id]

    def wait_trace(self, trace_id: str, services: set[str]) -> dict[str, dict[str, Any]]:
        """The trace's span per service once every one of `services` has exported its span."""
        self.proc.wait_until(
            lambda: {s["service"] for s in self.spans(trace_id)} >= services,
            60,
            f"spans of trace {trace_id} from {sorted(services)}",
        )
        by_service: dict[str, dict[str, Any]] = {}
        for span in self.spans(trace_id):
            assert span["service"] not in by_service, f"two spans of one hop: {span}"
            by_service[span["service"]] = span
        return by_service


@pytest.fixture
def receiver(log_dir: Path, tmp_path: Path) -> Iterator[Receiver]:
    r = Receiver(log_dir, tmp_path / "spans.jsonl")
    yield r
    r.proc.stop()


def _start_router(infra: LocalInfra, namespace: str, log_dir: Path, port: int) -> ServiceProcess:
    args = [*infra_flags(infra, namespace), "--host", "127.0.0.1", "--port", str(port)]
    proc = ServiceProcess("tandem.router", args, log_dir)
    proc.wait_log("router ready", timeout=60)
    return proc


def test_every_hop_of_a_request_exports_its_span_into_one_trace(
    infra: LocalInfra, log_dir: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TANDEM_OTEL_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms: export soon after a span ends
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.grpc_port}")
    cluster = Cluster(infra, log_dir)
    router_port = free_port()
    router = None
    try:
        cluster.start_workers(1)
        router = _start_router(infra, cluster.namespace, log_dir, router_port)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.http_port}")
        cluster.start_frontend("--router-url", f"127.0.0.1:{router_port}")

        # A client's trace: every hop joins it.
        trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
        status, body = post(
            f"{cluster.url}/v1/chat/completions",
            CHAT,
            headers={"traceparent": f"00-{trace_id}-{client_span}-01"},
        )
        assert status == 200, body
        hops = receiver.wait_trace(trace_id, {"tandem-frontend", "tandem-router", "tandem-worker"})
        frontend, routed, worker = (
            hops["tandem-frontend"],
            hops["tandem-router"],
            hops["tandem-worker"],
        )
        assert (frontend["name"], frontend["parent_span_id"]) == ("POST /v1/chat", client_span)
        assert (routed["name"], routed["parent_span_id"]) == ("Router.Route", frontend["span_id"])
        assert (worker["name"], worker["parent_span_id"]) == (
            "Worker.Generate",
            frontend["span_id"],
        )
        assert frontend["protocol"] == "http/protobuf"
        assert routed["protocol"] == worker["protocol"] == "grpc"

        # A request without one gets its own trace, started at the frontend.
        seen = {s["trace_id"] for s in map(json.loads, receiver.out.read_text().splitlines())}
        status, body = post(f"{cluster.url}/v1/chat/completions", CHAT)
        assert status == 200, body

        def new_traces() -> set[str]:
            lines = receiver.out.read_text().splitlines()
            return {s["trace_id"] for s in map(json.loads, lines)} - seen

        receiver.proc.wait_until(lambda: bool(new_traces()), 60, "the second request's trace")
        [second] = new_traces()
        hops = receiver.wait_trace(second, {"tandem-frontend", "tandem-router", "tandem-worker"})
        assert hops["tandem-frontend"]["parent_span_id"] == ""
    finally:
        cluster.stop()
        if router is not None:
            router.stop()
