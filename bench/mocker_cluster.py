"""A local benchmark cluster: nats + etcd, workers (mocker by default) and a frontend, each its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class MockerCluster:
    """nats + etcd + `num_workers` mocker workers + a frontend, as child processes.

    `worker_args` go to every worker (mocker flags: `--speedup-ratio`, `--num-kv-blocks`,
    ...), `frontend_args` to the frontend; logs are in `log_dir`. Ready when the frontend
    routes to every worker. `per_worker_args[i]` go to worker process i only (a role,
    `--num-workers`); then `expected_workers` is how many workers they host in all.
    `engine` is the workers' `--engine` (then `worker_args` are that engine's flags).
    """

    def __init__(
        self,
        num_workers: int,
        router_mode: str,
        log_dir: Path,
        worker_args: list[str] | tuple[str, ...] = (),
        # The KServe gRPC API's default port is a fixed one: off unless a benchmark asks.
        frontend_args: list[str] | tuple[str, ...] = ("--grpc-port", "0"),
        per_worker_args: list[list[str]] | None = None,
        expected_workers: int = 0,
        engine: str = "mocker",
    ) -> None:
        from tandem.launcher.local_infra import LocalInfra, free_port

        self.log_dir = log_dir
        self.infra = LocalInfra.start(log_dir / "infra")
        self.port = free_port()
        common = [
            "--nats",
            self.infra.nats_url,
            "--etcd",
            self.infra.etcd_url,
            "--namespace",
            "bench",
            "--log-level",
            "WARNING",
        ]
        self.workers: list[subprocess.Popen[bytes]] = []
        self.frontend: subprocess.Popen[bytes] | None = None
        try:
            self.workers = [
                self._spawn(
                    f"worker{i}",
                    [
                        "tandem.worker",
                        "--engine",
                        engine,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "0",
                        *common,
                        *worker_args,
                        *(per_worker_args[i] if per_worker_args else ()),
                    ],
                )
                for i in range(num_workers)
            ]
            self.frontend = self._spawn(
                "frontend",
                [
                    "tandem.frontend",
                    "--http-host",
                    "127.0.0.1",
                    "--http-port",
                    str(self.port),
                    "--router-mode",
                    router_mode,
                    *common,
                    *frontend_args,
                ],
            )
            self.url = f"http://127.0.0.1:{self.port}"
            self._wait_ready(expected_workers or num_workers)
        except BaseException:
            self.stop()
            raise

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in [self.frontend, *self.workers] if p is not None]

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
        return subprocess.Popen([sys.executable, "-m", *argv], stdout=log, stderr=subprocess.STDOUT)

    def _wait_ready(self, num_workers: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise SystemExit(f"a cluster process exited; logs in {self.log_dir}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                    models = json.load(resp)["models"]
                if models and max(models.values()) == num_workers:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"cluster not ready after {timeout}s; logs in {self.log_dir}")

    def model(self) -> str:
        """The first model the frontend serves."""
        with urllib.request.urlopen(f"{self.url}/v1/models", timeout=5) as resp:
            return str(json.load(resp)["data"][0]["id"])

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.infra.stop()
