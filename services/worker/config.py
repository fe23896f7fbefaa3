"""Settings of the worker process (the engine's own settings come from its config class)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tandem.runtime.config import RuntimeConfig, option

from .kv_transfer.config import KvTransferConfig
from .registry import ENGINES


def _random_instance_id() -> str:
    return uuid.uuid4().hex[:12]


LOAD_REPORT_INTERVAL_SECONDS = 1.0
"""How often a worker reports its load when nothing changes (the fleet simulator's too)."""


@dataclass(frozen=True, kw_only=True)
class WorkerConfig(RuntimeConfig):
    """Tandem worker: serves one engine over gRPC and reports it in etcd and on NATS.

    With --num-workers N (mocker only) one process hosts N independent workers:
    each its own instance id, engine, gRPC and /metrics port, KV event stream and
    load reports; they share the process's NATS connection and one etcd lease, so
    when the process dies all of its workers leave etcd together.
    """

    engine: str = option("torch", "inference engine", choices=tuple(ENGINES))
    host: str = option("0.0.0.0", "address the gRPC and metrics servers bind")
    advertise_host: str = option(
        "", "host others reach this worker at; empty = 127.0.0.1 or --host"
    )
    port: int = option(0, "gRPC port; 0 = a free port")
    metrics_port: int = option(0, "Prometheus /metrics HTTP port; 0 = a free port")
    instance_id: str = option(
        "",
        "unique id in etcd and NATS subjects; empty = random; with --num-workers N the "
        "workers are ID-0 .. ID-(N-1)",
        flag="--instance-id",
    )
    num_workers: int = option(
        1,
        "workers this process hosts (engines that allow it: mocker); fixed --port and "
        "--metrics-port values count up from the given port, one per worker",
    )
    disaggregation_mode: str = option(
        "aggregated",
        "role of this worker: aggregated (prefill and decode here), prefill (only prefill "
        "jobs from the queue; routers send it no requests) or decode (long prompts may be "
        "prefilled on a prefill worker, the KV moved here)",
        choices=("aggregated", "prefill", "decode"),
    )
    remote_prefill_timeout: float = option(
        10.0,
        "decode role: seconds a request waits for its remote prefill (queue + prefill + KV "
        "transfer) before this worker prefills it itself",
    )
    kv_transfer: KvTransferConfig = option(
        help="prefill and decode roles of the torch engine: how KV blocks move",
        default_factory=KvTransferConfig,
    )
    kv_event_buffer: int = option(4096, "KV events kept for Worker.KvEventsSince")
    load_report_interval: float = option(
        LOAD_REPORT_INTERVAL_SECONDS, "seconds between load reports when nothing changes"
    )
    shutdown_grace_seconds: float = option(
        0.0, "on SIGTERM, seconds in-flight streams may still finish before they are aborted"
    )
    drain_timeout: float = option(
        10.0,
        "on SIGTERM, seconds the worker stays registered as draining (routers send it "
        "nothing new) while its in-flight requests finish, before it leaves etcd; requests "
        "still running then move to other workers; 0 = leave at once",
    )

    def __post_init__(self) -> None:
        if self.kv_event_buffer <= 0:
            raise ValueError("kv_event_buffer must be positive")
        if self.load_report_interval <= 0:
            raise ValueError("load_report_interval must be positive")
        if self.remote_prefill_timeout <= 0:
            raise ValueError("remote_prefill_timeout must be positive")
        if self.drain_timeout < 0:
            raise ValueError(f"drain_timeout must be >= 0, got {self.drain_timeout}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}")
        if not self.instance_id:
            object.__setattr__(self, "instance_id", _random_instance_id())

    @property
    def instance_ids(self) -> list[str]:
        """One id per hosted worker: `--instance-id` itself when the process hosts one."""
        if self.num_workers == 1:
            return [self.instance_id]
        return [f"{self.instance_id}-{i}" for i in range(self.num_workers)]

    def port_of(self, index: int) -> int:
        """gRPC port of hosted worker `index` (0 = a free port)."""
        return self.port + index if self.port else 0

    def metrics_port_of(self, index: int) -> int:
        """/metrics port of hosted worker `index` (0 = a free port)."""
        return self.metrics_port + index if self.metrics_port else 0

    @property
    def endpoint_host(self) -> str:
        if self.advertise_host:
            return self.advertise_host
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
