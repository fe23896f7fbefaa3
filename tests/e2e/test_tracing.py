"""One request is one trace: the client's trace id reaches the frontend's and the worker's spans."""

from __future__ import annotations

import secrets
from pathlib import Path

from tandem.launcher.local_infra import LocalInfra

from tests.e2e.openai_cluster import MODEL, Cluster, post


def test_client_trace_id_appears_in_frontend_and_worker_spans(
    infra: LocalInfra, log_dir: Path
) -> None:
    cluster = Cluster(infra, log_dir)
    try:
        [worker] = cluster.start_workers(1, 100.0, "--otel-exporter", "console")
        cluster.start_frontend("--otel-exporter", "console", "--router-mode", "round-robin")
        trace_id = secrets.token_hex(16)
        status, body = post(
            f"{cluster.url}/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        )
        assert status == 200, body
        assert cluster.frontend is not None
        needle = f'"trace_id": "0x{trace_id}"'
        cluster.frontend.wait_log(needle, timeout=30)
        worker.proc.wait_log(needle, timeout=30)
        assert '"name": "Worker.Generate"' in worker.proc.log_text()
        assert '"name": "POST /v1/chat"' in cluster.frontend.log_text()
    finally:
        cluster.stop()
