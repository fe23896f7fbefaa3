"""Benchmark: KV transfer throughput between two processes, NIXL vs gRPC vs memcpy (not a test).

Two processes on one machine, each with a KV pool laid out as the torch
engine's for SmolLM2-135M (30 layers, 3 KV heads, head dim 64, 16-token
blocks), behind the real `KvTransferPlane` (descriptors in a real etcd,
`KvTransfer` on real gRPC servers). Each transport runs in its own pair of
processes, one after the other, as a worker has one `--kv-transport`: an idle
NIXL agent's progress thread keeps polling, and that CPU must not be charged
to the gRPC transfers (`--shared-processes` puts both in one pair, as before).
For each block-set size the sender moves that many blocks into the receiver's
pool over NIXL (one-sided READ by the receiver, UCX) or gRPC (streamed),
alternated with a plain memcpy of the same number of bytes in one process
(numpy copy of a contiguous buffer): the machine's physical limit. GB/s =
bytes / seconds of `send_blocks` as the control plane awaits it (request,
transfer, answer); % memcpy against the memcpy of the same run (the memcpy
column: the median over all of them). CPU send+recv s/GiB: each process's CPU
time (user + system, every thread) during a transfer per GiB moved, the
sender's + the receiver's, which depends less on what else runs on the
machine than GB/s does.

    python bench/kv_transfer.py [--sizes-mib 1,16,64,256] [--rounds 5] [--dtype float32]
                                [--transports nixl,grpc] [--shared-processes]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
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
        await asyncio.to_thread(_answer_cpu, conn)  # until the sender is done
        for plane, _, _ in planes.values():
            await plane.close()
        for server in servers:
            await server.stop(None)
        await discovery.close()

    asyncio.run(run())


def cpu_seconds() -> float:
    """This process's CPU time so far, every thread, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _answer_cpu(conn: Any) -> None:
    """Answer each "cpu" from the sender with this process's CPU time; return on "done"."""
    while conn.recv() == "cpu":
        conn.send(cpu_seconds())


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
    etcd_url: str,
    endpoints: dict[str, str],
    transfers: list[tuple[str, int]],
    conn: Any,
) -> dict[tuple[int, str], list[float]]:
    """Per (MiB, column): GB/s of each transport and of memcpy, each side's CPU s/GiB."""
    transports = list(endpoints)
    num_blocks = max(n for _, n in transfers)
    discovery, planes, servers = await _planes(
        "send", etcd_url, args.dtype, num_blocks, True, transports
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
            conn.send("cpu")
            recv_before, send_before = conn.recv(), cpu_seconds()
            stats = await plane.send_blocks(
                PeerInfo(f"recv-{transport}", endpoints[transport]), blocks, blocks, transfer_id=tid
            )
            send_cpu = cpu_seconds() - send_before
            conn.send("cpu")
            recv_cpu = conn.recv() - recv_before
            if size:
                gib = stats.num_bytes / 2**30
                results.setdefault((size, transport), []).append(stats.gbps)
                results.setdefault((size, f"send-cpu-{transport}"), []).append(send_cpu / gib)
                results.setdefault((size, f"recv-cpu-{transport}"), []).append(recv_cpu / gib)
    finally:
        for plane, _, _ in planes.values():
            await plane.close()
        for server in servers:
            await server.stop(None)
        await discovery.close()
    return results


def process_pairs(transports: list[str], shared: bool) -> list[list[str]]:
    """The transports each pair of processes runs: one each, or all in one pair (`shared`)."""
    return [transports] if shared else [[t] for t in transports]


def sender_main(
    out: Any,
    to_receiver: Any,
    args: argparse.Namespace,
    etcd_url: str,
    transfers: list[tuple[str, int]],
) -> None:
    """The sender, in a process of its own: a NIXL agent (and its polling thread) ends with it."""
    try:
        endpoints = to_receiver.recv()
        out.send(asyncio.run(sender(args, etcd_url, endpoints, transfers, to_receiver)))
    finally:
        to_receiver.send("done")


def run_pair(
    args: argparse.Namespace,
    infra: LocalInfra,
    transfers: list[tuple[str, int]],
    transports: list[str],
) -> dict[tuple[int, str], list[float]]:
    """The transfers of `transports` between two fresh processes, a sender and a receiver."""
    num_blocks = max(n for _, n in transfers)
    ctx = mp.get_context("spawn")
    to_receiver, to_sender = ctx.Pipe()
    results, out = ctx.Pipe(duplex=False)
    receiver = ctx.Process(
        target=receiver_main,
        args=(to_sender, infra.etcd_url, args.dtype, num_blocks, transfers, transports),
    )
    sender_proc = ctx.Process(
        target=sender_main, args=(out, to_receiver, args, infra.etcd_url, transfers)
    )
    receiver.start()
    sender_proc.start()
    for end in (to_receiver, to_sender, out):  # the children's now: EOF here if one dies
        end.close()
    try:
        got: dict[tuple[int, str], list[float]] = results.recv()
        return got
    finally:
        sender_proc.join(60)
        receiver.join(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="1,16,64,256")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--transports", default="nixl,grpc", help="which of nixl,grpc (nixl only where it loads)"
    )
    parser.add_argument(
        "--shared-processes",
        action="store_true",
        help="both transports' planes in one pair of processes, their transfers alternated",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mib.split(",")]
    transfers = plan(sizes, args.rounds, args.dtype)
    wanted = args.transports.split(",")
    transports = [t for t in ("nixl", "grpc") if t in wanted and (t != "nixl" or nixl_available())]
    pairs = process_pairs(transports, args.shared_processes)
    memcpy: dict[tuple[int, str], list[float]] = {}  # (MiB, transport): its own run's
    results: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        infra = LocalInfra.start(Path(tmp))
        try:
            for pair in pairs:
                got = run_pair(args, infra, transfers, pair)
                for (size, col), values in got.items():
                    if col == "memcpy":
                        for t in pair:
                            memcpy[(size, t)] = values
                    results.setdefault((size, col), []).extend(values)
        finally:
            infra.stop()
    per_block = _layout(args.dtype, 1).bytes_per_block
    how = "in one pair of processes" if args.shared_processes else "each in its own processes"
    print(
        f"KV transfer, 2 processes, {LAYERS} layers x {KV_HEADS} KV heads x {HEAD_DIM} dims x "
        f"{BLOCK}-token blocks, {args.dtype} ({per_block} B/block), median of {args.rounds}, "
        f"transports {how}"
    )
    print(
        f"{'MiB':>5} {'blocks':>7} {'memcpy GB/s':>12} "
        + " ".join(
            f"{t + ' GB/s':>10} {'% memcpy':>9} {'CPU send+recv s/GiB':>19}" for t in transports
        )
    )
    for size in sizes:
        n = max(1, round(size * 2**20 / per_block))
        mem = statistics.median(results[(size, "memcpy")])
        cols = []
        for t in transports:
            g = statistics.median(results[(size, t)])
            pct = 100 * g / statistics.median(memcpy[(size, t)])
            send = statistics.median(results[(size, f"send-cpu-{t}")])
            recv = statistics.median(results[(size, f"recv-cpu-{t}")])
            cols.append(f"{g:>10.2f} {pct:>8.0f}% {f'{send:.2f}+{recv:.2f}':>19}")
        print(f"{size:>5} {n:>7} {mem:>12.2f} " + " ".join(cols))


if __name__ == "__main__":
    main()
