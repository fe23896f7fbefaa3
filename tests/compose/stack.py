"""compose.yaml brought up as its own project, on free ports, and taken down again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tandem.launcher.local_infra import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
IMAGES = ("nats", "etcd", "worker", "frontend", "planner", "prometheus")


def compose_command() -> list[str]:
    """`docker compose` (the plugin) where it exists, else Debian's `docker-compose`."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("no compose command: run docker/engine.sh (make compose-test does)")


def docker_ids(kind: str, project: str | None = None) -> set[str]:
    """Ids of the containers, networks or volumes there are (of one compose project)."""
    args = ["docker", kind, "ls", "-q"] + (["--all"] if kind == "container" else [])
    if project is not None:
        args += ["--filter", f"label=com.docker.compose.project={project}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return set(out.split())


@dataclass
class ComposeStack:
    project: str = field(default_factory=lambda: f"tandem-test-{uuid.uuid4().hex[:8]}")
    http_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    command: list[str] = field(default_factory=compose_command)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def prometheus(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "TANDEM_HTTP_PORT": str(self.http_port),
            "TANDEM_PROMETHEUS_PORT": str(self.prometheus_port),
        }
        return subprocess.run(
            [*self.command, "--project-name", self.project, "--file", str(COMPOSE_FILE), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=timeout,
            check=False,
        )

    def up(self) -> None:
        missing = [f"tandem-{name}" for name in IMAGES if not _image_exists(f"tandem-{name}")]
        if missing:
            raise RuntimeError(f"images missing: {' '.join(missing)} (make images builds them)")
        result = self.compose("up", "--detach")
        if result.returncode != 0:
            raise RuntimeError(f"compose up failed:\n{result.stderr[-3000:]}\n{self.logs()}")

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.compose("down", "--timeout", "30")

    def logs(self, tail: int = 40) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail)).stdout[-12000:]

    def container(self, service: str) -> str:
        out = self.compose("ps", "-q", service).stdout.split()
        if not out:
            raise AssertionError(f"no container for service {service}")
        return out[0]

    def health(self, service: str) -> str:
        """Docker's health status of a service's container: starting, healthy, unhealthy."""
        result = subprocess.run(
            [
                "docker",
                "inspect",
                "--format",
                "{{json .State.Health.Status}}",
                self.container(service),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return str(json.loads(result.stdout))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def _image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0
