"""CPU seconds per generated token of a mocker worker process, under streaming gRPC load.

Starts nats + etcd, then per round one `tandem worker --engine mocker` process
(with `--num-workers`, one process hosting that many workers), and drives it
with a closed loop of streaming requests over one Worker.GenerateStream call
per worker, as the frontend does. The worker's CPU (user + system, from /proc)
over the load window is divided by the tokens it streamed: KV event publishing
on NATS, load reports, gRPC and the engine step loop all count.

  python bench/mocker_worker_cpu.py                       # this tree, 3 rounds
  python bench/mocker_worker_cpu.py --base /tmp/base_pkgs # A/B: rounds alternate base / this tree
  python bench/mocker_worker_cpu.py --num-kv-blocks 4096  # a full cache: evictions every step

`--base DIR` is put first on the worker's PYTHONPATH, so DIR/tandem/... (e.g.
symlinks into a checkout of the old code) is what that variant runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.grpc_util import TOKEN_COLUMNS_METADATA, create_channel
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

_READY = re.compile(r"worker ready instance_id=(\S+) endpoint=(\S+)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class RoundResult:
    variant: str
    tokens: int
    requests: int
    wall: float
    cpu: float
    rss: float

    @property
    def us_per_token(self) -> float:
        return self.cpu / self.tokens * 1e6 if self.tokens else float("nan")


def start_worker(
    infra: LocalInfra, args: argparse.Namespace, base: str | None, log: Path
) -> tuple[subprocess.Popen[bytes], list[str]]:
    env = dict(os.environ)
    if base:
        env["PYTHONPATH"] = os.pathsep.join([base, env.get("PYTHONPATH", "")])
    extra = ["--num-workers", str(args.num_workers)] if args.num_workers > 1 else []
    if args.num_kv_blocks:
        extra += ["--num-kv-blocks", str(args.num_kv_blocks)]
    argv = [sys.executable, "-m", "tandem.worker", "--engine", "mocker", "--host", "127.0.0.1",
            "--nats", infra.nats_url, "--etcd", infra.etcd_url, "--namespace", f"cpu{time.time_ns()}",
            "--speedup-ratio", str(args.speedup), *extra]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        endpoints = [m.group(2) for m in _READY.finditer(log.read_text(errors="replace"))]
        if len(endpoints) >= args.num_workers:
            return proc, endpoints
        if proc.poll() is not None:
            raise SystemExit(f"worker exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise SystemExit(f"worker not ready:\n{log.read_text()[-3000:]}")


async def drive(endpoint: str, args: argparse.Namespace, seed: int) -> tuple[int, int]:
    """Closed loop of `--concurrency` streaming requests on one GenerateStream; (tokens, requests)."""
    channel = create_channel(endpoint)
    outgoing: asyncio.Queue[worker_pb2.StreamRequest | None] = asyncio.Queue()
    keys = iter(range(1, 1 << 62))
    state = {"started": 0, "done": 0, "tokens": 0}

    def start_one() -> None:
        i = seed + state["started"]
        state["started"] += 1
        # A shared head (prefix hits) and a distinct tail (new blocks, KV events).
        prompt = [1 + i % 7] * (args.prompt - 64) + [(i * 64 + k) % 40000 + 1 for k in range(64)]
        sampling = worker_pb2.SamplingParams(max_tokens=args.tokens, ignore_eos=True)
        request = worker_pb2.GenerateRequest(
            request_id=f"r{i}", token_ids=prompt, sampling=sampling
        )
        outgoing.put_nowait(worker_pb2.StreamRequest(key=next(keys), start=request))

    async def requests():  # type: ignore[no-untyped-def]
        while (msg := await outgoing.get()) is not None:
            yield msg

    for _ in range(args.concurrency):
        start_one()
    stub = worker_pb2_grpc.WorkerStub(channel)
    call = stub.GenerateStream(requests(), metadata=(TOKEN_COLUMNS_METADATA,))  # as the frontend
    async for batch in call:
        state["tokens"] += len(batch.token_ids)
        for out in batch.outputs:
            state["tokens"] += len(out.response.token_ids)
            if out.response.finish_reason or out.status_code:
                state["done"] += 1
                if state["started"] < args.requests:
                    start_one()
                elif state["done"] == state["started"]:
                    outgoing.put_nowait(None)
    await channel.close()
    return state["tokens"], state["done"]


async def one_round(
    infra: LocalInfra, args: argparse.Namespace, variant: str, base: str | None, log_dir: Path
) -> RoundResult:
    proc, endpoints = start_worker(infra, args, base, log_dir / f"{variant}-{time.time_ns()}.log")
    try:
        await asyncio.gather(*(drive(e, args, 10**6) for e in endpoints))  # warm-up
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        results = await asyncio.gather(
            *(drive(e, args, n * 10**7) for n, e in enumerate(endpoints))
        )
        wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - cpu0
        tokens = sum(t for t, _ in results)
        return RoundResult(
            variant, tokens, sum(r for _, r in results), wall, cpu, rss_mib(proc.pid)
        )
    finally:
        proc.terminate()
        proc.wait(30)


async def bench(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="mocker-cpu-") as tmp:
        infra = LocalInfra.start(Path(tmp) / "infra")
        variants = [("base", args.base), ("this", None)] if args.base else [("this", None)]
        results: list[RoundResult] = []
        try:
            for _ in range(args.rounds):
                for name, base in variants:
                    results.append(await one_round(infra, args, name, base, Path(tmp)))
                    print_row(results[-1])
        finally:
            infra.stop()
    print()
    for name, _ in variants:
        mine = sorted(r.us_per_token for r in results if r.variant == name)
        print(f"{name}: median {mine[len(mine) // 2]:.1f} us CPU per generated token")


def print_row(r: RoundResult) -> None:
    print(f"{r.variant:>5}: {r.requests} requests, {r.tokens} tokens in {r.wall:.1f} s "
          f"({r.tokens / r.wall:,.0f} tok/s), worker CPU {r.cpu:.2f} s = "
          f"{r.us_per_token:.1f} us/token, RSS {r.rss:.0f} MiB", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, default=64, help="streams per worker")
    parser.add_argument("--requests", type=int, default=640, help="requests per worker per round")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of each request")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    parser.add_argument("--speedup", type=float, default=1.0, help="mocker --speedup-ratio")
    parser.add_argument("--num-workers", type=int, default=1, help="workers in the process")
    parser.add_argument(
        "--num-kv-blocks",
        type=int,
        default=0,
        help="mocker KV blocks per worker (0: its default); a small pool evicts every step",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--base", help="PYTHONPATH entry holding the baseline `tandem` package")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
