"""gRPC aio servers and channels with the settings every Tandem service uses.

One place for keepalive (a dead peer is noticed in seconds, not after TCP's
minutes), reconnect backoff (a restarted peer is reached again within a
second), message size limits, and a clear error when a port is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from .startup import StartupError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Each endpoint gets its own channel; do not let gRPC share subchannels across them.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Clients ping every 10 s; allow it rather than answering GOAWAY "too_many_pings".
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC sets SO_REUSEPORT by default: a second process would then silently share
    # a fixed port (and half the traffic) instead of failing to start.
    ("grpc.so_reuseport", 0),
]


# A GenerateStream client that reads StreamResponse's token columns says so with this
# call metadata (see worker.proto); a worker packs plain one-token steps only for it.
TOKEN_COLUMNS_METADATA = ("tandem-token-columns", "1")


class PortInUseError(StartupError):
    """The gRPC server could not bind its address."""


def create_channel(endpoint: str) -> grpc.aio.Channel:
    """An insecure aio channel to `host:port` with the shared options."""
    return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)


async def start_server(
    add_servicers: Callable[[grpc.aio.Server], None],
    host: str,
    port: int,
    options: Sequence[tuple[str, int]] = tuple(SERVER_OPTIONS),
) -> tuple[grpc.aio.Server, int]:
    """Start an aio server on `host:port` (0 = a free port); returns it and the bound port.

    `options` replace `SERVER_OPTIONS` (a server with its own message size limit).
    """
    server = grpc.aio.server(options=list(options))
    add_servicers(server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises when the address is taken
        raise PortInUseError(f"the gRPC server cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise PortInUseError(f"the gRPC server cannot listen on {address} (in use?)")
    await server.start()
    return server, bound
