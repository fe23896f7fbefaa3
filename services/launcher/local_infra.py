"""Start a private nats-server (JetStream) and etcd on free loopback ports.

Used by `tandem up` when no --nats/--etcd is given, and by the test fixtures.
Each server gets its own data directory and is stopped (and its directory
removed unless `keep_data`) by `stop()`. They run in a session of their own, so
a Ctrl-C at the terminal reaches the services first; nats and etcd are stopped
last, once the services have deregistered and closed their connections.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class InfraError(RuntimeError):
    """A required server binary is missing or did not come up."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InfraError(
                f"process exited with code {proc.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise InfraError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_for_etcd_health(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until etcd answers its /health as healthy.

    It opens its client port about a second before it serves (while it elects
    itself leader); clients that connect in between time out and log alarms.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InfraError(f"process exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                if json.load(resp).get("health") == "true":
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise InfraError(f"etcd on port {port} not healthy after {timeout}s")


def find_binary(name: str) -> str:
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if path is None:
        raise InfraError(
            f"`{name}` not found. Install it (Debian/Ubuntu: apt-get install "
            f"{'nats-server' if name == 'nats-server' else 'etcd-server'}) or run `make install`."
        )
    return path


@dataclass
class ManagedServer:
    """One server process we started, with its data directory and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    data_dir: Path
    port: int
    log_path: Path
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        scheme = "nats" if self.name == "nats" else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, timeout: float = 20.0) -> None:
        """Start the same server again on the same port and data (after `stop()`)."""
        self.stop()
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                self.argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_ready(self.name, self.port, timeout, self.proc)


def _wait_ready(name: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    wait_for_port("127.0.0.1", port, timeout, proc)
    if name == "etcd":
        wait_for_etcd_health(port, timeout, proc)


def _spawn(name: str, argv: list[str], data_dir: Path, port: int, timeout: float) -> ManagedServer:
    log_path = data_dir / f"{name}.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = ManagedServer(name, proc, data_dir, port, log_path, argv)
    try:
        _wait_ready(name, port, timeout, proc)
    except InfraError as exc:
        server.stop()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise InfraError(f"{name} did not start: {exc}\n{tail}") from None
    return server


def start_nats(data_dir: Path, timeout: float = 20.0) -> ManagedServer:
    """nats-server with JetStream, storing under `data_dir/nats`."""
    port = free_port()
    store = data_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    argv = [
        find_binary("nats-server"),
        "-js",
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-sd",
        str(store),
    ]
    return _spawn("nats", argv, data_dir, port, timeout)


def start_etcd(data_dir: Path, timeout: float = 20.0) -> ManagedServer:
    """Single-member etcd storing under `data_dir/etcd`."""
    client_port, peer_port = free_port(), free_port()
    store = data_dir / "etcd"
    argv = [
        find_binary("etcd"),
        "--name", "tandem",
        "--data-dir", str(store),
        "--listen-client-urls", f"http://127.0.0.1:{client_port}",
        "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"tandem=http://127.0.0.1:{peer_port}",
        "--log-level", "warn",
    ]  # fmt: skip
    return _spawn("etcd", argv, data_dir, client_port, timeout)


@dataclass
class LocalInfra:
    """A private nats + etcd pair."""

    nats: ManagedServer
    etcd: ManagedServer
    root: Path
    keep_data: bool = False

    @property
    def nats_url(self) -> str:
        return self.nats.url

    @property
    def etcd_url(self) -> str:
        return self.etcd.url

    @classmethod
    def start(cls, root: Path | None = None, keep_data: bool = False) -> LocalInfra:
        base = Path(tempfile.mkdtemp(prefix="tandem-infra-")) if root is None else root
        base.mkdir(parents=True, exist_ok=True)
        nats = start_nats(base)
        try:
            etcd = start_etcd(base)
        except Exception:
            nats.stop()
            raise
        return cls(nats, etcd, base, keep_data or root is not None)

    def stop(self) -> None:
        self.etcd.stop()
        self.nats.stop()
        if not self.keep_data:
            shutil.rmtree(self.root, ignore_errors=True)
