"""Benchmark: KV transfer throughput between two processes, NIXL vs gRPC vs memcpy (not a test).

Two processes on one machine, each with KV pools laid out as the torch
engine's for SmolLM2-135M (30 layers, 3 KV heads, head dim 64, 16-token
blocks), one per transport, behind the real `KvTransferPlane`s (descriptors in
a real etcd, `KvTransfer` on real gRPC servers). For each block-set size the
sender moves that many blocks into the receiver's pool over NIXL (one-sided
READ by the receiver, UCX) and over gRPC (streamed), alternated with a plain
memcpy of the same number of bytes in one process (numpy copy of a contiguous
buffer): the machine's physical limit. GB/s = bytes / seconds of
`send_blocks` as the control plane awaits it (request, transfer, answer).

    python bench/kv_transfer.py [--sizes-mib 1,16,64,256] [--rounds 5] [--dtype float32]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.discovery import Discovery
from tandem.runtime.grpc_util import start_server
from tandem.worker.kv_transfer.config import KvTransferConfig
from tandem.worker.kv_transfer.layout import KvLayout
from tandem.worker.kv_transfer.nixl_api import nixl_available
from tandem.worker.kv_transfer.plane import KvTransferPlane
from tandem.worker.kv_transfer.pool import KvPool
from tandem.worker.kv_transfer.transport import PeerInfo

NAMESPACE = "bench"
LAYERS, KV_HEADS, HEAD_DIM, BLOCK = 30, 3, 64, 16


def _layout(dtype: str, num_blocks: int) -> KvLayout:
    return KvLayout(BLOCK, LAYERS, KV_HEADS, HEAD_DIM, dtype, num_blocks)


def _pool(dtype: str, num_blocks: int, fill: bool) -> KvPool:
    shape = (num_blocks, BLOCK, 2, KV_HEADS, HEAD_DIM)
    tdtype = getattr(torch, dtype)
    tensors = [
        (torch.rand(shape) if fill else torch.zeros(shape)).to(tdtype) for _ in range(LAYERS)
    ]
    return KvPool.of(tensors, BLOCK)


def plan(sizes_mib: list[int], rounds: int, dtype: str) -> list[tuple[str, int]]:
    """(transfer id, blocks) of every transfer, in order; both processes compute the same."""
    per_block = _layout(dtype, 1).bytes_per_block
    out = [(f"warm-{t}", 4) for t in ("nixl", "grpc")]
    for size in sizes_mib:
        n = max(1, round(size * 2**20 / per_block))
        out += [(f"{size}-{r}-{t}", n) for r in range(rounds) for t in ("nixl", "grpc")]
    return out


async def _planes(
    instance: str, etcd_url: str, dtype: str, num_blocks: int, fill: bool, transports: list[str]
) -> tuple[Discovery, dict[str, tuple[KvTransferPlane, KvPool, str]], list[Any]]:
    # Pools first: filling them takes seconds, which must not starve the lease keepalive.
    pools = {t: _pool(dtype, num_blocks, fill) for t in transports}
    discovery = Discovery(etcd_url, NAMESPACE)
    await discovery.start()
    planes: dict[str, tuple[KvTransferPlane, KvPool, str]] = {}
    servers = []
    for transport in transports:
        pool = pools[transport]
        iid = f"{instance}-{transport}"
        config = KvTransferConfig(kv_transport=transport, kv_transfer_timeout=300)  # type: ignore[arg-type]
        plane = KvTransferPlane(iid, NAMESPACE, config, discovery.client)
        plane.start(pool)
        server, port = await start_server(plane.add_to_server, "127.0.0.1", 0)
        await plane.publish(discovery, f"127.0.0.1:{port}")
        planes[transport] = (plane, pool, f"127.0.0.1:{port}")
        servers.append(server)
    return discovery, planes, servers


def receiver_main(
    conn: Any,
    etcd_url: str,
    dtype: str,
    num_blocks: int,
    transfers: list[tuple[str, int]],
    transports: list[str],
) -> None:
    async def run() -> None:
        discovery, planes, servers = await _planes(
            "recv", etcd_url, dtype, num_blocks, False, transports
        )
        for tid, n in transfers:
            transport = tid.rsplit("-", 1)[1]
            if transport in planes:
                planes[transport][0].receiver.expect(tid, list(range(n)))
        conn.send({t: p[2] for t, p in planes.items()})
        await asyncio.to_thread(conn.recv)  # the sender is done
        for plane, _, _ in planes.values():
            await plane.close()
        for server in servers:
            await server.stop(None)
        await discovery.close()

    asyncio.run(run())


def memcpy_seconds(num_bytes: int, buffers: dict[int, tuple[np.ndarray, np.ndarray]]) -> float:
    """One plain copy of `num_bytes` between two buffers made (and touched) once per size."""
    if num_bytes not in buffers:
        src = np.full(num_bytes, 7, dtype=np.uint8)
        buffers[num_bytes] = (src, src.copy())
    src, dst = buffers[num_bytes]
    started = time.perf_counter()
    np.copyto(dst, src)
    return time.perf_counter() - started


async def sender(
    args: argparse.Namespace,
    infra: LocalInfra,
    endpoints: dict[str, str],
    transfers: list[tuple[str, int]],
) -> dict[tuple[int, str], list[float]]:
    transports = list(endpoints)
    num_blocks = max(n for _, n in transfers)
    discovery, planes, servers = await _planes(
        "send", infra.etcd_url, args.dtype, num_blocks, True, transports
    )
    per_block = _layout(args.dtype, 1).bytes_per_block
    results: dict[tuple[int, str], list[float]] = {}
    buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    try:
        for tid, n in transfers:
            label, transport = tid.rsplit("-", 1)
            if transport not in planes:
                continue
            size = int(label.split("-")[0]) if not label.startswith("warm") else 0
            if size and transport == transports[0]:
                secs = memcpy_seconds(n * per_block, buffers)
                results.setdefault((size, "memcpy"), []).append(n * per_block / secs / 1e9)
            plane = planes[transport][0]
            blocks = list(range(n))
            stats = await plane.send_blocks(
                PeerInfo(f"recv-{transport}", endpoints[transport]), blocks, blocks, transfer_id=tid
            )
            if size:
                results.setdefault((size, transport), []).append(stats.gbps)
    finally:
        for plane, _, _ in planes.values():
            await plane.close()
        for server in servers:
            await server.stop(None)
        await discovery.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="1,16,64,256")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mib.split(",")]
    transfers = plan(sizes, args.rounds, args.dtype)
    transports = ["nixl", "grpc"] if nixl_available() else ["grpc"]
    num_blocks = max(n for _, n in transfers)
    with tempfile.TemporaryDirectory() as tmp:
        infra = LocalInfra.start(Path(tmp))
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=receiver_main,
            args=(child, infra.etcd_url, args.dtype, num_blocks, transfers, transports),
        )
        proc.start()
        try:
            endpoints = parent.recv()
            results = asyncio.run(sender(args, infra, endpoints, transfers))
        finally:
            parent.send("done")
            proc.join(60)
            infra.stop()
    per_block = _layout(args.dtype, 1).bytes_per_block
    print(
        f"KV transfer, 2 processes, {LAYERS} layers x {KV_HEADS} KV heads x {HEAD_DIM} dims x {BLOCK}-token blocks, {args.dtype} ({per_block} B/block), median of {args.rounds}"
    )
    print(
        f"{'MiB':>5} {'blocks':>7} {'memcpy GB/s':>12} "
        + " ".join(f"{t + ' GB/s':>10} {'% memcpy':>9}" for t in transports)
    )
    for size in sizes:
        n = max(1, round(size * 2**20 / per_block))
        mem = statistics.median(results[(size, "memcpy")])
        cols = []
        for t in transports:
            g = statistics.median(results[(size, t)])
            cols.append(f"{g:>10.2f} {100 * g / mem:>8.0f}%")
        print(f"{size:>5} {n:>7} {mem:>12.2f} " + " ".join(cols))


if __name__ == "__main__":
    main()
