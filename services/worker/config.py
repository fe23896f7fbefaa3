"""Settings of the worker process (the engine's own settings come from its config class)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tandem.runtime.config import RuntimeConfig, option

from .registry import ENGINES


def _random_instance_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True, kw_only=True)
class WorkerConfig(RuntimeConfig):
    """Tandem worker: serves one engine over gRPC and reports it in etcd and on NATS."""

    engine: str = option("torch", "inference engine", choices=tuple(ENGINES))
    host: str = option("0.0.0.0", "address the gRPC and metrics servers bind")
    advertise_host: str = option(
        "", "host others reach this worker at; empty = 127.0.0.1 or --host"
    )
    port: int = option(0, "gRPC port; 0 = a free port")
    metrics_port: int = option(0, "Prometheus /metrics HTTP port; 0 = a free port")
    instance_id: str = option(
        "", "unique id in etcd and NATS subjects; empty = random", flag="--instance-id"
    )
    disaggregation_mode: str = option(
        "aggregated", "role of this worker (prefill/decode come later)", choices=("aggregated",)
    )
    kv_event_buffer: int = option(4096, "KV events kept for Worker.KvEventsSince")
    load_report_interval: float = option(1.0, "seconds between load reports when nothing changes")
    shutdown_grace_seconds: float = option(
        0.0, "on SIGTERM, seconds in-flight streams may still finish before they are aborted"
    )

    def __post_init__(self) -> None:
        if self.kv_event_buffer <= 0:
            raise ValueError("kv_event_buffer must be positive")
        if self.load_report_interval <= 0:
            raise ValueError("load_report_interval must be positive")
        if not self.instance_id:
            object.__setattr__(self, "instance_id", _random_instance_id())

    @property
    def endpoint_host(self) -> str:
        if self.advertise_host:
            return self.advertise_host
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
