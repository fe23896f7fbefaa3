"""Run Tandem services as real processes in tests, and wait for them without sleeps."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tandem.launcher.local_infra import LocalInfra


class ServiceProcess:
    """A `python -m tandem.<service>` child with its output in a log file."""

    def __init__(
        self, module: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.module = module
        self.args = args
        self.log_path = (
            log_dir / f"{module.rsplit('.', 1)[-1]}-{os.getpid()}-{time.monotonic_ns()}.log"
        )
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `predicate` until true; fail with the process log if it dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if not self.is_alive():
                raise AssertionError(
                    f"{self.module} exited ({self.proc.returncode}) before {what}:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}:\n{self.log_text()[-4000:]}"
        )

    def wait_http_ok(self, url: str, timeout: float = 60.0) -> None:
        def ok() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        self.wait_until(ok, timeout, f"{url} to answer 200")

    def wait_log(self, needle: str, timeout: float = 60.0) -> None:
        self.wait_until(
            lambda: needle in self.log_text(), timeout, f"log line containing {needle!r}"
        )

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (a crashed worker)."""
        if self.is_alive():
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.is_alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


_WORKER_READY = re.compile(r"worker ready instance_id=(\S+) endpoint=(\S+) metrics=(\S+)")


def infra_flags(infra: LocalInfra, namespace: str) -> list[str]:
    """The flags that point a service at `infra`, in `namespace`."""
    return ["--nats", infra.nats_url, "--etcd", infra.etcd_url, "--namespace", namespace]


def spawn_mocker_worker(
    infra: LocalInfra, namespace: str, log_dir: Path, *extra: str
) -> ServiceProcess:
    """A mocker worker on loopback with free ports; `extra` flags come last and win."""
    args = ["--engine", "mocker", *infra_flags(infra, namespace), "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "0", *extra]  # fmt: skip
    return ServiceProcess("tandem.worker", args, log_dir)


def worker_ready(proc: ServiceProcess, timeout: float = 90.0) -> tuple[str, str, str]:
    """Wait for the worker's ready line; its (instance_id, gRPC endpoint, metrics address)."""
    proc.wait_log("worker ready", timeout=timeout)
    match = _WORKER_READY.search(proc.log_text())
    assert match, proc.log_text()
    instance_id, endpoint, metrics = match.groups()
    return instance_id, endpoint, metrics
