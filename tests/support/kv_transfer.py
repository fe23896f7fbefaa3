"""Helpers for KV transfer tests: pools of known bytes, an in-memory etcd, planes on real gRPC."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from tandem.runtime.grpc_util import start_server
from tandem.worker.kv_transfer.config import KvTransferConfig
from tandem.worker.kv_transfer.nixl_api import nixl_available
from tandem.worker.kv_transfer.plane import KvTransferPlane
from tandem.worker.kv_transfer.pool import KvPool

TRANSPORTS = [
    "grpc",
    pytest.param(
        "nixl",
        marks=pytest.mark.skipif(
            not nixl_available(), reason="NIXL cannot load here (nixl-cu12 not installed)"
        ),
    ),
]
"""Every `--kv-transport`, for tests that must pass on both (nixl skipped, saying why, without it)."""


def make_pool(
    num_blocks: int = 32,
    *,
    block_size: int = 4,
    num_layers: int = 3,
    kv_heads: int = 2,
    head_dim: int = 8,
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> KvPool:
    """Per-layer KV tensors, zeros or (with `seed`) random values."""
    shape = (num_blocks, block_size, 2, kv_heads, head_dim)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    tensors = [
        torch.randn(shape, generator=gen).to(dtype) if gen else torch.zeros(shape, dtype=dtype)
        for _ in range(num_layers)
    ]
    return KvPool.of(tensors, block_size)


def block_digest(pool: KvPool, block_ids: list[int]) -> str:
    """sha256 of the blocks' bytes (every layer), in order."""
    return hashlib.sha256(pool.read(block_ids)).hexdigest()


@dataclass
class _Kv:
    value: bytes


class _Resp:
    def __init__(self, kvs: list[_Kv]) -> None:
        self.kvs = kvs


class MemoryEtcd:
    """The slice of an etcd3aio client and `Discovery` that the data plane uses: get and put_leased."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.kv = self

    async def get(self, key: str, timeout: float = 0) -> _Resp:
        value = self.data.get(key)
        return _Resp([] if value is None else [_Kv(value.encode())])

    async def put_leased(self, key: str, value: str) -> None:
        self.data[key] = value


async def serve_plane(
    instance_id: str,
    namespace: str,
    transport: str,
    etcd: Any,
    pool: KvPool,
    timeout: float = 30.0,
) -> tuple[KvTransferPlane, Any, str]:
    """A plane on its own loopback gRPC server, its descriptor published; (plane, server, endpoint)."""
    config = KvTransferConfig(kv_transport=transport, kv_transfer_timeout=timeout)  # type: ignore[arg-type]
    plane = KvTransferPlane(instance_id, namespace, config, etcd)
    plane.start(pool)
    server, port = await start_server(plane.add_to_server, "127.0.0.1", 0)
    endpoint = f"127.0.0.1:{port}"
    await plane.publish(etcd, endpoint)
    return plane, server, endpoint
