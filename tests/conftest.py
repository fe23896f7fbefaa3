"""Shared fixtures: a real nats-server (JetStream) and etcd on free loopback ports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tandem.launcher.local_infra import LocalInfra


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalInfra]:
    """One nats + etcd pair for the whole session; tests isolate by namespace."""
    servers = LocalInfra.start(tmp_path_factory.mktemp("infra"))
    yield servers
    servers.stop()


@pytest.fixture
def namespace() -> str:
    """A fresh namespace per test, so tests sharing `infra` never see each other."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "logs"
    path.mkdir()
    return path
