"""The etcd client as every process uses it: endpoints, reconnect settings, outage errors.

etcd may go away for a while; callers catch `ETCD_ERRORS`, keep what they
know, and try again after `RETRY_SECONDS`.
"""

from __future__ import annotations

import ipaddress
import socket

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


def _host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0]


def _is_address(endpoint: str) -> bool:
    try:
        ipaddress.IPv4Address(_host(endpoint))
    except ValueError:
        return False
    return True


def _resolve(endpoint: str) -> list[str]:
    """'name:port' -> 'a.b.c.d:port' for each IPv4 address of the name."""
    port = endpoint.rpartition(":")[2]
    infos = socket.getaddrinfo(_host(endpoint), int(port), socket.AF_INET, socket.SOCK_STREAM)
    return sorted({f"{info[4][0]}:{port}" for info in infos})


def channel_target(endpoints: list[str]) -> str:
    """The gRPC target of `endpoints` ('host:port' each).

    etcd3aio always builds an `ipv4:` target, which gRPC refuses for a host
    name, yet etcd is reached by name in containers (`etcd:2379` in compose, a
    Service in Kubernetes). One name goes to gRPC's DNS resolver (all of its
    addresses, round-robin, looked up again on reconnect); several names are
    looked up here, once.
    """
    endpoints = [
        f"127.0.0.1:{e.rpartition(':')[2]}" if _host(e) == "localhost" else e for e in endpoints
    ]
    if all(_is_address(e) for e in endpoints):
        return "ipv4:" + ",".join(endpoints)
    if len(endpoints) == 1:
        return f"dns:///{endpoints[0]}"
    resolved = [a for e in endpoints for a in ([e] if _is_address(e) else _resolve(e))]
    return "ipv4:" + ",".join(resolved)


def new_etcd_client(endpoints: list[str]) -> Etcd3Client:
    """An unconnected client that fails fast and reconnects quickly after an outage."""
    client = Etcd3Client(endpoints, rpc_max_attempts=1)
    # No public hooks for the target or the channel options.
    client._manager.target = channel_target(endpoints)
    client._manager.grpc_options.extend(_CHANNEL_OPTIONS)
    return client
