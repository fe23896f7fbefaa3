"""Benchmark: routing quality on a multi-turn chat workload (not a test).

8 mocker workers (real processes, real nats + etcd) whose KV caches are too
small for every conversation. Many conversations run at once; each turn
re-sends the whole history (shared system prompt + earlier turns + the
model's earlier answers) plus a new user message. For each routing mode the
same workload runs against fresh workers; printed per mode: TTFT p50/p99,
throughput, and the prefix-cache hit rate the workers achieved (cached
prompt tokens / prompt tokens, from each response's usage). `oracle` always
picks the worker holding the longest cached prefix (from the workers' own KV
events), whatever its load: the best achievable hit rate.
`kv (raw units)` is the kv policy with both cost terms in raw blocks
(PREFILL_BLOCK_COST = 1), as common KV routers default to.

    python bench/routing_quality.py [--modes kv,round-robin,random,oracle,kv-raw]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tandem.launcher.local_infra import LocalInfra
from tandem.router import cost_model
from tandem.router.api import BaseRouter, RouteResult
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.policy_registry import RouterDeps, make_router
from tandem.router.worker_view import candidates
from tandem.runtime.discovery import Discovery
from tandem.runtime.messaging import Messaging
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

BLOCK_SIZE = 16  # the workers' --kv-cache-block-size; the routers learn it from them
READY = re.compile(r"worker ready instance_id=(\S+) endpoint=(\S+)")


@dataclass(frozen=True)
class Workload:
    conversations: int = 96
    turns: int = 16
    system_prompts: int = 4
    system_tokens: int = 2048
    first_user_tokens: tuple[int, int] = (1024, 4096)
    user_tokens: tuple[int, int] = (64, 256)
    output_tokens: tuple[int, int] = (16, 96)
    think_seconds: float = 0.1
    arrival_rate: float = 8.0
    seed: int = 0


@dataclass
class Stats:
    ttft: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    predicted_overlap_blocks: int = 0
    prompt_blocks: int = 0
    errors: int = 0
    wall: float = 0.0


class OracleRouter(BaseRouter):
    """Longest cached prefix wins (ties: fewest requests in flight, then random); ignores load."""

    def __init__(self, kv: KvRouter) -> None:
        self.kv = kv
        self._rng = random.Random(0)
        self._in_flight: dict[str, str] = {}

    async def start(self) -> None:
        await self.kv.start()

    async def stop(self) -> None:
        await self.kv.stop()

    async def route(
        self,
        request_id: str,
        token_ids: list[int],
        *,
        exclude: Collection[str] = (),
        max_tokens: int = 0,
    ) -> RouteResult:
        from tandem.runtime.block_hash import sequence_hashes

        hashes = sequence_hashes(token_ids, self.kv.block_size)  # the workers' block size
        overlaps = self.kv.index.overlaps(hashes)
        infos = candidates(self.kv._workers, exclude)
        busy = {iid: 0 for iid in (i.instance_id for i in infos)}
        for iid in self._in_flight.values():
            if iid in busy:
                busy[iid] += 1
        best = max(overlaps.get(i.instance_id, 0) for i in infos)
        tied = [i for i in infos if overlaps.get(i.instance_id, 0) == best]
        least = min(busy[i.instance_id] for i in tied)
        info = self._rng.choice([i for i in tied if busy[i.instance_id] == least])
        self._in_flight[request_id] = info.instance_id
        return RouteResult(info.instance_id, info.endpoint, best, len(hashes))

    def free(self, request_id: str) -> None:
        self._in_flight.pop(request_id, None)


def start_workers(
    infra: LocalInfra, namespace: str, args: argparse.Namespace, log_dir: Path
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(args.workers):
        log = open(log_dir / f"{namespace}-worker{i}.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tandem.worker",
                    "--engine",
                    "mocker",
                    "--nats",
                    infra.nats_url,
                    "--etcd",
                    infra.etcd_url,
                    "--namespace",
                    namespace,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--metrics-port",
                    "0",
                    "--num-kv-blocks",
                    str(args.kv_blocks),
                    "--kv-cache-block-size",
                    str(BLOCK_SIZE),
                    "--context-length",
                    "32768",
                    "--speedup-ratio",
                    str(args.speedup),
                    "--load-report-interval",
                    "0.25",
                    "--log-level",
                    "WARNING",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


async def run_mode(
    mode: str, infra: LocalInfra, args: argparse.Namespace, wl: Workload, log_dir: Path
) -> Stats:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    procs = start_workers(infra, namespace, args, log_dir)
    messaging = Messaging(infra.nats_url, namespace)
    await messaging.connect()
    discovery = Discovery(infra.etcd_url, namespace)
    await discovery.start()
    workers = discovery.instance_set("worker")
    await workers.start()
    await workers.wait_for(lambda d: len(d) == args.workers, timeout=120)
    saved_cost = cost_model.PREFILL_BLOCK_COST
    router: BaseRouter
    if mode == "oracle":
        router = OracleRouter(KvRouter(RoutingConfig(), workers, messaging=messaging))
    elif mode == "kv-raw":
        cost_model.PREFILL_BLOCK_COST = 1.0
        router = make_router(
            RoutingConfig(router_mode="kv"), workers, RouterDeps(messaging, discovery)
        )
    else:
        if mode == "kv" and args.prefill_block_cost is not None:
            cost_model.PREFILL_BLOCK_COST = args.prefill_block_cost
        router = make_router(
            RoutingConfig(router_mode=mode), workers, RouterDeps(messaging, discovery)
        )
    await router.start()
    channels = {info.endpoint: grpc.aio.insecure_channel(info.endpoint) for info in workers}
    stats = Stats()
    try:
        started = time.perf_counter()
        await drive(router, channels, wl, stats)
        stats.wall = time.perf_counter() - started
    finally:
        cost_model.PREFILL_BLOCK_COST = saved_cost
        await router.stop()
        for ch in channels.values():
            await ch.close()
        await discovery.close()
        await messaging.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    return stats


async def drive(
    router: BaseRouter, channels: dict[str, grpc.aio.Channel], wl: Workload, stats: Stats
) -> None:
    rng = random.Random(wl.seed)
    vocab = 30000
    systems = [
        [rng.randrange(1, vocab) for _ in range(wl.system_tokens)] for _ in range(wl.system_prompts)
    ]
    # Open loop: conversations arrive as a Poisson process whatever the cluster's speed,
    # as users do; within one, each turn waits for the previous answer plus think time.
    starts, t = [], 0.0
    for _ in range(wl.conversations):
        starts.append(t)
        t += rng.expovariate(wl.arrival_rate)

    async def conversation(c: int) -> None:
        crng = random.Random(wl.seed * 1000 + c)
        history = list(systems[c % wl.system_prompts])
        await asyncio.sleep(starts[c])
        for turn in range(wl.turns):
            lo, hi = wl.first_user_tokens if turn == 0 else wl.user_tokens
            history += [crng.randrange(1, vocab) for _ in range(crng.randint(lo, hi))]
            max_tokens = crng.randint(*wl.output_tokens)
            rid = uuid.uuid4().hex
            started = time.perf_counter()
            result = await router.route(rid, history, max_tokens=max_tokens)
            stats.prompt_blocks += result.prompt_blocks
            stats.predicted_overlap_blocks += result.overlap_blocks
            output: list[int] = []
            first = True
            try:
                stub = worker_pb2_grpc.WorkerStub(channels[result.endpoint])
                request = worker_pb2.GenerateRequest(
                    request_id=rid,
                    token_ids=history,
                    sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                )
                async for msg in stub.Generate(request):
                    if first and msg.token_ids:
                        stats.ttft.append(time.perf_counter() - started)
                        router.prefill_done(rid)
                        first = False
                    output += msg.token_ids
                    if msg.finish_reason:
                        stats.prompt_tokens += msg.usage.prompt_tokens
                        stats.cached_tokens += msg.usage.cached_tokens
                        stats.output_tokens += msg.usage.completion_tokens
            except grpc.aio.AioRpcError:
                stats.errors += 1
            finally:
                router.free(rid)
            history += output
            await asyncio.sleep(crng.expovariate(1 / wl.think_seconds))

    await asyncio.gather(*(conversation(c) for c in range(wl.conversations)))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def main_async(args: argparse.Namespace) -> None:
    wl = Workload(
        conversations=args.conversations,
        turns=args.turns,
        arrival_rate=args.arrival_rate,
        think_seconds=args.think,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="routing-quality-"))
    infra = LocalInfra.start(log_dir / "infra")
    results: dict[str, tuple[Stats, float]] = {}
    try:
        for mode in args.modes.split(","):
            started = time.perf_counter()
            stats = await run_mode(mode, infra, args, wl, log_dir)
            results[mode] = (stats, time.perf_counter() - started)
            print(f"  {mode}: done in {results[mode][1]:.0f}s", file=sys.stderr, flush=True)
    finally:
        infra.stop()
    biggest = (
        wl.system_tokens
        + sum(wl.first_user_tokens) // 2
        + (wl.turns - 1) * sum(wl.user_tokens) // 2
        + wl.turns * sum(wl.output_tokens) // 2
    )
    print(
        f"workload: {wl.conversations} conversations x {wl.turns} turns, "
        f"{wl.system_prompts} shared system prompts of {wl.system_tokens} tokens, "
        f"arriving at {wl.arrival_rate}/s, think time {wl.think_seconds}s, "
        f"final histories ~{biggest} tokens on average"
    )
    print(
        f"workers: {args.workers} mockers x {args.kv_blocks} KV blocks of {BLOCK_SIZE} tokens "
        f"(cluster holds {args.workers * args.kv_blocks * BLOCK_SIZE:,} tokens; "
        f"conversations end at ~{wl.conversations * biggest:,}), speedup-ratio {args.speedup} "
        "(times below are wall-clock, i.e. simulated / speedup)"
    )
    print()
    header = (
        f"{'mode':<16}{'requests':>9}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}{'req/s':>8}"
        f"{'out tok/s':>11}{'hit rate':>10}{'predicted':>11}{'errors':>8}"
    )
    print(header)
    rr_p50 = None
    for mode, (s, _) in results.items():
        wall = s.wall
        if not s.ttft:
            continue
        p50, p99 = pct(s.ttft, 0.5) * 1e3, pct(s.ttft, 0.99) * 1e3
        if mode == "round-robin":
            rr_p50 = p50
        hit = s.cached_tokens / s.prompt_tokens if s.prompt_tokens else 0.0
        pred = s.predicted_overlap_blocks / s.prompt_blocks if s.prompt_blocks else 0.0
        name = {"kv-raw": "kv (raw units)"}.get(mode, mode)
        print(
            f"{name:<16}{len(s.ttft):>9}{p50:>13.1f}{p99:>13.1f}{len(s.ttft) / wall:>8.1f}"
            f"{s.output_tokens / wall:>11.0f}{hit:>9.1%}{pred:>11.1%}{s.errors:>8}"
        )
    if rr_p50 and "kv" in results and results["kv"][0].ttft:
        kv_stats = results["kv"][0]
        print()
        print(
            f"kv TTFT p50 is {rr_p50 / (pct(kv_stats.ttft, 0.5) * 1e3):.1f}x lower than round-robin"
        )
        if "oracle" in results:
            o = results["oracle"][0]
            kv_hit = kv_stats.cached_tokens / kv_stats.prompt_tokens
            oracle_hit = o.cached_tokens / o.prompt_tokens
            oracle_pred = o.predicted_overlap_blocks / o.prompt_blocks
            print(
                f"kv hit rate {kv_hit:.1%} vs oracle {oracle_hit:.1%} achieved "
                f"({(kv_hit - oracle_hit) * 100:+.1f} points) and {oracle_pred:.1%} "
                f"predicted at its routing time ({(kv_hit - oracle_pred) * 100:+.1f} points)"
            )
    print(
        "(mean TTFT per mode: "
        + ", ".join(
            f"{m} {statistics.mean(s.ttft) * 1e3:.0f} ms" for m, (s, _) in results.items() if s.ttft
        )
        + ")"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="kv,round-robin,random,oracle,kv-raw")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--kv-blocks", type=int, default=4096)
    parser.add_argument("--speedup", type=float, default=1.0)
    parser.add_argument("--conversations", type=int, default=96)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument(
        "--arrival-rate", type=float, default=8.0, help="new conversations per second"
    )
    parser.add_argument(
        "--prefill-block-cost",
        type=float,
        default=None,
        help="override cost_model.PREFILL_BLOCK_COST for the kv mode (exploration only)",
    )
    parser.add_argument(
        "--think", type=float, default=0.1, help="mean seconds between a conversation's turns"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
