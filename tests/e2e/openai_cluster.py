"""A real cluster for the OpenAI e2e tests: mocker workers and a frontend as separate processes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tandem.launcher.local_infra import LocalInfra, free_port
from tandem.runtime.model_card import DEFAULT_MODEL_NAME, default_model_path
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

from tests.support.processes import (
    ServiceProcess,
    infra_flags,
    spawn_mocker_worker,
    worker_ready,
)

MODEL = DEFAULT_MODEL_NAME


@dataclass
class Worker:
    proc: ServiceProcess
    instance_id: str
    endpoint: str

    def num_running(self) -> int:
        """Requests the engine is running or queueing now (Worker.Stats over gRPC)."""
        with grpc.insecure_channel(self.endpoint) as channel:
            stats = worker_pb2_grpc.WorkerStub(channel).Stats(worker_pb2.StatsRequest(), timeout=5)
        return int(stats.num_running + stats.num_waiting)


@dataclass
class Cluster:
    """Workers and a frontend in one namespace on shared nats + etcd."""

    infra: LocalInfra
    log_dir: Path
    namespace: str = field(default_factory=lambda: f"e2e{uuid.uuid4().hex[:8]}")
    workers: list[Worker] = field(default_factory=list)
    frontend: ServiceProcess | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def common_flags(self) -> list[str]:
        return infra_flags(self.infra, self.namespace)

    def start_workers(self, count: int, speedup: float = 100.0, *extra: str) -> list[Worker]:
        procs = [
            spawn_mocker_worker(
                self.infra, self.namespace, self.log_dir, "--speedup-ratio", str(speedup), *extra
            )
            for _ in range(count)
        ]
        started = []
        for proc in procs:
            instance_id, endpoint, _ = worker_ready(proc, timeout=60)
            started.append(Worker(proc, instance_id, endpoint))
        self.workers.extend(started)
        return started

    def start_frontend(self, *extra: str, wait_workers: int = 1) -> ServiceProcess:
        self.port = free_port()
        self.frontend = ServiceProcess(
            "tandem.frontend",
            [
                "--http-host",
                "127.0.0.1",
                "--http-port",
                str(self.port),
                *self.common_flags(),
                *extra,
            ],
            self.log_dir,
        )
        self.frontend.wait_log("frontend ready", timeout=60)
        if wait_workers:
            self.wait_workers(wait_workers)
        return self.frontend

    def static_model_flags(self) -> list[str]:
        return ["--model-name", MODEL, "--model-path", default_model_path()]

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
            return dict(json.load(resp))

    def wait_workers(self, count: int, timeout: float = 60.0) -> None:
        """Until the frontend routes `MODEL` to exactly `count` workers."""
        assert self.frontend is not None

        def ready() -> bool:
            try:
                return self.health()["models"].get(MODEL) == count
            except (OSError, ValueError, KeyError):
                return False

        self.frontend.wait_until(ready, timeout, f"the frontend to see {count} workers")

    def stop(self) -> None:
        if self.frontend is not None:
            self.frontend.stop()
        for worker in self.workers:
            worker.proc.stop()


def post(
    url: str,
    body: bytes | dict[str, Any],
    timeout: float = 30.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST raw bytes or JSON (with extra headers); (status, parsed JSON body) for any status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
