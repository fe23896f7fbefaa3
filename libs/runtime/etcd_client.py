"""The etcd client as every process uses it: endpoints, reconnect settings, outage errors.

etcd may go away for a while; callers catch `ETCD_ERRORS`, keep what they
know, and try again after `RETRY_SECONDS`.
"""

from __future__ import annotations

import grpc
from etcd3aio import Etcd3Client, EtcdError

# What an etcd call raises while etcd is unreachable.
ETCD_ERRORS = (EtcdError, grpc.aio.AioRpcError, TimeoutError, OSError)
RETRY_SECONDS = 1.0
# Keep gRPC from backing off for minutes after an etcd outage.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def normalize_endpoints(endpoints: str | list[str]) -> list[str]:
    """'http://a:2379,b:2379' -> ['a:2379', 'b:2379']."""
    items = endpoints.split(",") if isinstance(endpoints, str) else endpoints
    out = []
    for item in items:
        item = item.strip()
        for scheme in ("http://", "https://"):
            item = item.removeprefix(scheme)
        if item:
            out.append(item)
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


def new_etcd_client(endpoints: list[str]) -> Etcd3Client:
    """An unconnected client that fails fast and reconnects quickly after an outage."""
    client = Etcd3Client(endpoints, rpc_max_attempts=1)
    client._manager.grpc_options.extend(_CHANNEL_OPTIONS)  # no public hook for options
    return client
