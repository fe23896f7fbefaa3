"""Router settings: `RoutingConfig` (what any embedder of the routing library sets) and
`RouterConfig` (the standalone service: routing + runtime + listen addresses)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.runtime.config import RuntimeConfig, option

from .cost_model import DEFAULT_DISK_HIT_WEIGHT, DEFAULT_HOST_HIT_WEIGHT
from .policy_registry import policy_names

ROUTER_MODES: tuple[str, ...] = policy_names()
"""The built-in policy names: flag choices are fixed when argparse is built, at import."""


@dataclass(frozen=True, kw_only=True)
class RoutingConfig:
    """How workers are picked. The frontend embeds these fields in its own config.

    No block size: the kv policy hashes prompts with the one the workers register.
    """

    router_mode: str = option("kv", "Worker selection policy.", choices=ROUTER_MODES)
    kv_overlap_score_weight: float = option(
        1.0, "Weight of the prefill term (blocks still to compute) against the decode term."
    )
    router_host_cache_hit_weight: float = option(
        DEFAULT_HOST_HIT_WEIGHT,
        "Share of a device cache hit's saved prefill a block in a worker's host memory earns "
        "(0-1; it is copied back instead of computed).",
    )
    router_disk_cache_hit_weight: float = option(
        DEFAULT_DISK_HIT_WEIGHT,
        "Share of a device cache hit's saved prefill a block on a worker's disk tier earns (0-1).",
    )
    router_temperature: float = option(
        0.0, "0: cheapest worker; >0: sample from softmax over normalised negative costs."
    )
    # 1.0, not lower: a conversation's worker is often nearly full with that conversation's
    # own blocks, and a lower threshold sends its next turn, whose prefix it holds, elsewhere
    # to be recomputed (bench/routing_quality.py `tiny`: 45 % hits at 0.95, 55 % at 1.0).
    busy_threshold: float = option(
        1.0, "KV usage fraction above which a worker gets no new requests while others have room."
    )
    max_queue: int = option(1024, "Requests that may wait when every worker is busy; beyond: 503.")
    queue_timeout: float = option(30.0, "Seconds a request waits for a non-busy worker before 503.")
    kv_events: bool = option(
        True, "Follow workers' KV events; --no-kv-events predicts caches from routing decisions."
    )
    approx_ttl: float = option(
        120.0, "With --no-kv-events: seconds a routed prefix counts as cached."
    )
    router_replica_sync: bool = option(
        True, "Share active-load updates with other router replicas over NATS."
    )

    def __post_init__(self) -> None:
        # The live registry: a policy registered after import is valid too.
        if self.router_mode not in (modes := policy_names()):
            raise ValueError(f"router_mode must be one of {modes}, got {self.router_mode!r}")
        if self.router_temperature < 0:
            raise ValueError("router_temperature must be >= 0")
        if self.kv_overlap_score_weight < 0:
            raise ValueError("kv_overlap_score_weight must be >= 0")
        for name in ("router_host_cache_hit_weight", "router_disk_cache_hit_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.busy_threshold <= 0:
            raise ValueError("busy_threshold must be > 0 (above 1: never busy)")
        if self.queue_timeout <= 0 or self.approx_ttl <= 0:
            raise ValueError("queue_timeout and approx_ttl must be > 0")


@dataclass(frozen=True, kw_only=True)
class RouterConfig(RuntimeConfig, RoutingConfig):
    """The standalone router service (`tandem router`)."""

    model: str = option("", "Route only to workers serving this model ('' = any).")
    host: str = option("0.0.0.0", "Address the gRPC Router service listens on.")
    port: int = option(7100, "gRPC port of the Router service (0 = pick a free one).")
    metrics_port: int = option(0, "Port of /metrics and /health (0 = none).")
