"""Settings of the KV data plane (worker flags, generated from the field names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tandem.runtime.config import option

KvTransportName = Literal["nixl", "grpc"]


@dataclass(frozen=True, slots=True)
class KvTransferConfig:
    """How prefill and decode workers move KV blocks."""

    kv_transport: KvTransportName = option(
        "nixl",
        "how KV blocks move between prefill and decode workers: nixl (NIXL/UCX one-sided "
        "READ, host or GPU memory) or grpc (streamed over the workers' gRPC servers, works "
        "everywhere); both sides of a transfer must use the same one",
        choices=("nixl", "grpc"),
    )
    kv_transfer_timeout: float = option(
        30.0, "seconds one KV transfer may take before it fails (a dead peer never hangs it)"
    )

    def __post_init__(self) -> None:
        if self.kv_transfer_timeout <= 0:
            raise ValueError("kv_transfer_timeout must be positive")
