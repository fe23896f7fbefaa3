"""Benchmark: routing quality across a matrix of workloads (not a test).

Each workload runs once per routing mode against fresh mocker workers (real
processes, real nats + etcd, 8 by default) at the router's defaults. Printed
per workload and mode: TTFT p50/p99, throughput (output tokens/s), the
prefix-cache hit rate the workers achieved (cached prompt tokens / prompt
tokens, from each response's usage) and the CPU the run used; then the
kv / round-robin ratios and a verdict against the targets:

- where the caches are too small for round-robin to hit (all but `ample`):
  kv TTFT p50 at least 3x lower than round-robin's (`rr/oracle uncached
  prompt` is how many times more prompt tokens round-robin computes than the
  oracle: about the most any router's hits can cut TTFT);
- wherever prompts share prefixes: kv hit rate within 5 points of the oracle's;
- where nothing is shared: kv TTFT p50 within 10 % of round-robin's and
  throughput within 2 %.

`oracle` picks the worker holding the longest cached prefix (from the
workers' own KV events), whatever its load: the hit rate routing alone can
reach. `kv-raw` is the kv policy with the prefill term in raw blocks
(PREFILL_BLOCK_COST = 1), `random` picks at random.

Workloads (`--workloads`, default all; `--quick` shrinks each to about a third):
multi-turn chats at KV block size 16 and 64, long per-conversation documents,
caches ample / tight / far too small, low and high concurrency (the latter also with
caches that cannot hold the conversations in progress), a slice of a
Mooncake trace, and unique prompts (nothing to share, closed loop).

    python bench/routing_quality.py [--workloads chat16,trace] [--modes kv,round-robin,oracle] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import signal
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
from tandem.launcher.mooncake_trace import TraceRecord, prompt_token_ids, read_trace
from tandem.router import cost_model
from tandem.router.api import BaseRouter, RouteResult
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.policy_registry import RouterDeps, make_router
from tandem.router.radix_index import TierOverlaps
from tandem.router.worker_view import WorkerView, candidates
from tandem.runtime.block_hash import sequence_hashes
from tandem.runtime.discovery import Discovery
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.messaging import Messaging
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

VOCAB = 30000
DEFAULT_TRACE = Path(__file__).resolve().parents[2] / "shared/traces/synthetic_trace.jsonl"


@dataclass(frozen=True)
class Workload:
    """One row of the matrix: what the clients send and how big the workers' caches are.

    Chats: `conversations` arrive as a Poisson process (`arrival_rate`/s; 0 = all at
    once); each turn re-sends the whole history (a shared system prompt, the first user
    message, earlier turns and answers) plus a new user message, after the previous
    answer and a think time. `unique_prompts`: every request is a fresh prompt (nothing
    to share). `trace_start`/`trace_requests`: replay that slice of a Mooncake trace
    instead, `trace_speed` times faster than recorded.
    """

    name: str
    about: str
    block_size: int = 16
    cache_fraction: float = 0.5
    """Cluster KV capacity / the distinct prompt tokens the workload creates."""
    rr_can_hit: bool = False
    """The caches hold enough for round-robin to hit too: no 3x TTFT target."""
    conversations: int = 48
    turns: int = 8
    system_prompts: int = 4
    system_tokens: int = 2048
    first_user_tokens: tuple[int, int] = (1024, 3072)
    user_tokens: tuple[int, int] = (64, 256)
    output_tokens: tuple[int, int] = (16, 64)
    think_seconds: float = 0.1
    arrival_rate: float = 5.0
    unique_prompts: bool = False
    trace_start: int = 0
    trace_requests: int = 0
    trace_speed: float = 3.0
    trace_max_tokens: int = 32768
    trace_output_cap: int = 128
    seed: int = 0

    @property
    def is_trace(self) -> bool:
        return self.trace_requests > 0

    @property
    def shares(self) -> bool:
        return not self.unique_prompts

    def quick(self) -> Workload:
        if self.is_trace:
            return dataclasses.replace(self, trace_requests=self.trace_requests // 3)
        return dataclasses.replace(
            self,
            conversations=max(8, self.conversations // 2),
            turns=max(3, self.turns * 2 // 3),
        )


BASE = Workload("chat16", "multi-turn chat, block 16, tight cache")
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        BASE,
        dataclasses.replace(
            BASE, name="chat64", about="multi-turn chat, block 64, tight cache", block_size=64
        ),
        dataclasses.replace(
            BASE,
            name="docs",
            about="a long document per conversation (4-8k tokens), tight cache",
            conversations=32,
            turns=6,
            system_tokens=512,
            first_user_tokens=(4096, 8192),
            user_tokens=(32, 128),
            arrival_rate=3.0,
        ),
        dataclasses.replace(
            BASE,
            name="ample",
            about="multi-turn chat, ample cache",
            cache_fraction=4.0,
            rr_can_hit=True,
        ),
        dataclasses.replace(
            BASE, name="tiny", about="multi-turn chat, cache far too small", cache_fraction=0.12
        ),
        dataclasses.replace(
            BASE,
            name="low-conc",
            about="multi-turn chat, ~2 conversations at a time",
            conversations=16,
            arrival_rate=1.0,
        ),
        dataclasses.replace(
            BASE,
            name="high-conc",
            about="multi-turn chat, ~40 conversations at a time, cache holds those in progress",
            cache_fraction=0.7,
            conversations=96,
            turns=6,
            arrival_rate=20.0,
        ),
        dataclasses.replace(
            BASE,
            name="high-conc-small",
            about="as high-conc, cache smaller than the conversations in progress",
            cache_fraction=0.5,
            conversations=96,
            turns=6,
            arrival_rate=20.0,
        ),
        dataclasses.replace(
            BASE,
            name="trace",
            about="Mooncake trace slice (prompts <= 32k tokens, outputs <= 128)",
            cache_fraction=0.0,  # the mocker's default pool
            trace_start=3200,
            trace_requests=300,
        ),
        dataclasses.replace(
            BASE,
            name="no-share",
            about="unique prompts, closed loop of 16 streams",
            conversations=16,
            turns=20,
            system_tokens=0,
            first_user_tokens=(256, 1024),
            think_seconds=0.0,
            arrival_rate=0.0,
            unique_prompts=True,
        ),
    )
}


@dataclass
class Stats:
    ttft: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    errors: int = 0
    wall: float = 0.0
    cpu_seconds: float = 0.0
    misses: HolderMisses | None = None

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def throughput(self) -> float:
        return self.output_tokens / self.wall if self.wall else 0.0

    def p(self, q: float) -> float:
        ordered = sorted(self.ttft)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


@dataclass
class HolderMisses:
    """Why the kv router sent requests away from the worker holding their longest cached
    prefix (`--why-missed`): that worker was over the busy threshold, or cheaper elsewhere
    (summed cost terms of the holder minus the chosen worker, in the cost model's units)."""

    decisions: int = 0
    kept: int = 0
    busy: int = 0
    by_cost: int = 0
    hit: float = 0.0
    queued_prefill: float = 0.0
    reported_prefill: float = 0.0
    decode: float = 0.0

    def watch(self, kv: KvRouter) -> None:
        choose = kv._choose

        def counting_choose(
            overlaps: TierOverlaps,
            prompt_blocks: int,
            request_blocks: int,
            exclude: Collection[str],
        ) -> tuple[InstanceInfo, int] | None:
            chosen = choose(overlaps, prompt_blocks, request_blocks, exclude)
            if chosen is not None and overlaps.device:  # mocker workers: the device tier only
                self._count(kv, overlaps.device, chosen[0].instance_id)
            return chosen

        kv._choose = counting_choose  # type: ignore[method-assign]

    def _count(self, kv: KvRouter, overlaps: dict[str, int], chosen: str) -> None:
        best = max(overlaps.values())
        instances = kv._workers.instances
        holders = [i for i in instances if overlaps.get(i, 0) == best]
        if len(holders) == len(instances):
            return  # every worker holds it (a system prompt): nothing to miss
        self.decisions += 1
        if chosen in holders:
            self.kept += 1
            return
        ids = [*holders, chosen]
        prefills, decodes, used = kv.load.loads(ids)
        totals = [instances[iid].total_blocks or kv.load.total_blocks(iid) for iid in holders]
        free = [
            i
            for i, total in enumerate(totals)
            if total <= 0 or used[i] <= kv.config.busy_threshold * total
        ]
        if not free:
            self.busy += 1
            return
        self.by_cost += 1
        h, c = free[0], len(ids) - 1
        w = kv.config.kv_overlap_score_weight * cost_model.PREFILL_BLOCK_COST
        per_token = w / kv.block_size
        self.hit += w * (best - overlaps.get(chosen, 0))
        backlog = [cost_model.backlog_tokens(p) * per_token for p in prefills]
        self.queued_prefill += backlog[h] - backlog[c]
        own = kv.load._prefill.get(holders[h], 0)
        self.reported_prefill += max(0.0, backlog[h] - cost_model.backlog_tokens(own) * per_token)
        self.decode += decodes[h] - decodes[c]

    def line(self) -> str:
        n = max(self.by_cost, 1)
        return (
            f"kv, requests whose longest prefix one worker holds: {self.decisions}; sent there "
            f"{self.kept}, away as it was busy {self.busy}, away by cost {self.by_cost} "
            f"(per such request: hit {self.hit / n:.0f}; the holder's queued prefill beyond the "
            f"chosen worker's {self.queued_prefill / n:.0f}, the part of the holder's seen only "
            f"in its reports {self.reported_prefill / n:.0f}; its extra decode "
            f"{self.decode / n:.0f})"
        )


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
        hashes = sequence_hashes(token_ids, self.kv.block_size)  # the workers' block size
        overlaps = self.kv.index.overlaps(hashes)
        infos = candidates(self.kv._workers, exclude)
        busy = {i.instance_id: 0 for i in infos}
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


# -- what the clients send --------------------------------------------------------


def history_tokens(wl: Workload) -> tuple[int, int]:
    """(distinct prompt tokens the chat workload creates, its longest request) on average."""
    mean = lambda r: sum(r) / 2  # noqa: E731
    longest = (
        wl.system_tokens
        + wl.first_user_tokens[1]
        + (wl.turns - 1) * wl.user_tokens[1]
        + (wl.turns - 1) * wl.output_tokens[1]
    )
    if wl.unique_prompts:
        distinct = wl.conversations * wl.turns * mean(wl.first_user_tokens)
        return int(distinct), wl.first_user_tokens[1] + wl.output_tokens[1]
    per_conversation = (
        mean(wl.first_user_tokens)
        + (wl.turns - 1) * mean(wl.user_tokens)
        + wl.turns * mean(wl.output_tokens)
    )
    distinct = wl.system_prompts * wl.system_tokens + wl.conversations * per_conversation
    return int(distinct), longest


def trace_records(wl: Workload, trace: Path) -> list[TraceRecord]:
    records = list(read_trace(trace, wl.trace_start + wl.trace_requests))[wl.trace_start :]
    return [r for r in records if r.input_length + wl.trace_output_cap <= wl.trace_max_tokens]


def kv_blocks(wl: Workload, workers: int) -> int:
    """Blocks per worker: `cache_fraction` of what the workload creates, never less than
    room for its longest request and a few more (0: the mocker's default pool)."""
    if wl.cache_fraction <= 0:
        return 16384 * 16 // wl.block_size
    distinct, longest = history_tokens(wl)
    tokens = max(wl.cache_fraction * distinct / workers, 1.2 * longest)
    return -(-int(tokens) // wl.block_size)


async def send(
    router: BaseRouter,
    channels: dict[str, grpc.aio.Channel],
    prompt: list[int],
    max_tokens: int,
    stats: Stats,
) -> list[int]:
    """Route one request, stream it from its worker; returns the tokens generated."""
    rid = uuid.uuid4().hex
    started = time.perf_counter()
    result = await router.route(rid, prompt, max_tokens=max_tokens)
    output: list[int] = []
    first = True
    try:
        stub = worker_pb2_grpc.WorkerStub(channels[result.endpoint])
        request = worker_pb2.GenerateRequest(
            request_id=rid,
            token_ids=prompt,
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
    return output


async def drive_chats(
    router: BaseRouter, channels: dict[str, grpc.aio.Channel], wl: Workload, stats: Stats
) -> None:
    rng = random.Random(wl.seed)
    systems = [
        [rng.randrange(1, VOCAB) for _ in range(wl.system_tokens)] for _ in range(wl.system_prompts)
    ]
    # Open loop: conversations arrive whatever the cluster's speed, as users do.
    starts, t = [], 0.0
    for _ in range(wl.conversations):
        starts.append(t)
        t += rng.expovariate(wl.arrival_rate) if wl.arrival_rate > 0 else 0.0

    async def conversation(c: int) -> None:
        crng = random.Random(wl.seed * 1000 + c)
        history = list(systems[c % wl.system_prompts])
        await asyncio.sleep(starts[c])
        for turn in range(wl.turns):
            lo, hi = wl.first_user_tokens if turn == 0 or wl.unique_prompts else wl.user_tokens
            if wl.unique_prompts:
                history = []
            history += [crng.randrange(1, VOCAB) for _ in range(crng.randint(lo, hi))]
            history += await send(router, channels, history, crng.randint(*wl.output_tokens), stats)
            if wl.think_seconds > 0:
                await asyncio.sleep(crng.expovariate(1 / wl.think_seconds))

    await asyncio.gather(*(conversation(c) for c in range(wl.conversations)))


async def drive_trace(
    router: BaseRouter,
    channels: dict[str, grpc.aio.Channel],
    wl: Workload,
    records: list[TraceRecord],
    stats: Stats,
) -> None:
    prompts = [prompt_token_ids(r) for r in records]
    t0 = records[0].arrival_s
    began = time.perf_counter()

    async def one(record: TraceRecord, prompt: list[int]) -> None:
        delay = (record.arrival_s - t0) / wl.trace_speed - (time.perf_counter() - began)
        await asyncio.sleep(max(delay, 0.0))
        await send(router, channels, prompt, min(record.output_length, wl.trace_output_cap), stats)

    await asyncio.gather(*(one(r, p) for r, p in zip(records, prompts, strict=True)))


# -- one mode on fresh workers ---------------------------------------------------


def start_workers(
    infra: LocalInfra,
    namespace: str,
    args: argparse.Namespace,
    wl: Workload,
    blocks: int,
    log_dir: Path,
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(args.workers):
        log = open(log_dir / f"{namespace}-worker{i}.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "tandem.worker", "--engine", "mocker"),
                    *("--nats", infra.nats_url, "--etcd", infra.etcd_url),
                    *("--namespace", namespace, "--host", "127.0.0.1", "--port", "0"),
                    *("--metrics-port", "0", "--num-kv-blocks", str(blocks)),
                    *("--kv-cache-block-size", str(wl.block_size)),
                    *("--context-length", "32768", "--speedup-ratio", str(args.speedup)),
                    *("--load-report-interval", "0.25", "--log-level", "WARNING"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return procs


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of this process and `pids` so far (Linux /proc)."""
    total = sum(os.times()[:2])
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError):
            pass
    return total


def make_mode_router(
    mode: str,
    args: argparse.Namespace,
    workers: WorkerView,
    messaging: Messaging,
    discovery: Discovery,
) -> BaseRouter:
    if mode == "oracle":
        return OracleRouter(KvRouter(RoutingConfig(), workers, messaging=messaging))
    if mode == "kv-raw":
        cost_model.PREFILL_BLOCK_COST = 1.0
        mode = "kv"
    elif mode == "kv" and args.prefill_block_cost is not None:
        cost_model.PREFILL_BLOCK_COST = args.prefill_block_cost
    config = RoutingConfig(router_mode=mode)
    if mode == "kv" and args.busy_threshold is not None:
        config = dataclasses.replace(config, busy_threshold=args.busy_threshold)
    return make_router(config, workers, RouterDeps(messaging, discovery))


async def run_mode(
    mode: str,
    infra: LocalInfra,
    args: argparse.Namespace,
    wl: Workload,
    records: list[TraceRecord],
    log_dir: Path,
) -> Stats:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    procs = start_workers(infra, namespace, args, wl, kv_blocks(wl, args.workers), log_dir)
    messaging = Messaging(infra.nats_url, namespace)
    await messaging.connect()
    discovery = Discovery(infra.etcd_url, namespace)
    await discovery.start()
    workers = discovery.instance_set("worker")
    await workers.start()
    while True:  # until all registered; a worker that exits says why in its log
        with contextlib.suppress(TimeoutError):
            await workers.wait_for(lambda d: len(d) == args.workers, timeout=1)
            break
        if dead := [i for i, p in enumerate(procs) if p.poll() is not None]:
            for p in procs:
                p.kill()
            raise SystemExit(f"worker {dead[0]} exited: see {log_dir}/{namespace}-worker*.log")
    saved_cost = cost_model.PREFILL_BLOCK_COST
    router = make_mode_router(mode, args, workers, messaging, discovery)
    await router.start()
    channels = {info.endpoint: grpc.aio.insecure_channel(info.endpoint) for info in workers}
    stats = Stats()
    if args.why_missed and isinstance(router, KvRouter):
        stats.misses = HolderMisses()
        stats.misses.watch(router)
    pids = [p.pid for p in procs]
    try:
        cpu0, started = cpu_seconds(pids), time.perf_counter()
        if wl.is_trace:
            await drive_trace(router, channels, wl, records, stats)
        else:
            await drive_chats(router, channels, wl, stats)
        stats.wall = time.perf_counter() - started
        stats.cpu_seconds = cpu_seconds(pids) - cpu0
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


# -- report ---------------------------------------------------------------------


def describe(wl: Workload, args: argparse.Namespace, records: list[TraceRecord]) -> str:
    blocks = kv_blocks(wl, args.workers)
    cache = f"{args.workers} workers x {blocks} blocks of {wl.block_size} tokens"
    if wl.is_trace:
        tokens = sum(r.input_length for r in records)
        return (
            f"{len(records)} requests from #{wl.trace_start} ({tokens:,} prompt tokens) "
            f"at {wl.trace_speed}x trace speed; {cache}"
        )
    distinct, _ = history_tokens(wl)
    held = args.workers * blocks * wl.block_size
    arrive = f"{wl.arrival_rate}/s" if wl.arrival_rate else "all at once"
    return (
        f"{wl.conversations} x {wl.turns} turns arriving {arrive}, "
        f"~{distinct:,} distinct prompt tokens; {cache} = {held / distinct:.2f}x of them"
    )


def verdict(wl: Workload, res: dict[str, Stats]) -> tuple[str, list[str]]:
    """(one-line summary, the ratios) of kv against round-robin and the oracle."""
    kv, rr, oracle = res.get("kv"), res.get("round-robin"), res.get("oracle")
    if kv is None or rr is None or not kv.ttft or not rr.ttft:
        return "n/a (needs kv and round-robin)", []
    p50 = rr.p(0.5) / kv.p(0.5)
    p99 = rr.p(0.99) / kv.p(0.99)
    tput = kv.throughput / rr.throughput if rr.throughput else float("nan")
    ratios = [f"rr/kv TTFT p50 {p50:.2f}x", f"p99 {p99:.2f}x", f"kv/rr throughput {tput:.3f}"]
    checks: list[str] = []
    if not wl.shares:
        checks.append(f"p50 within 10% {'met' if kv.p(0.5) <= 1.1 * rr.p(0.5) else 'MISSED'}")
        checks.append(f"throughput within 2% {'met' if tput >= 0.98 else 'MISSED'}")
    elif oracle is not None:
        gap = (kv.hit_rate - oracle.hit_rate) * 100
        ratios.append(f"kv - oracle hit {gap:+.1f} points")
        checks.append(f"hit within 5 points {'met' if gap >= -5 else 'MISSED'}")
        # The most a router's hits can cut prefill below round-robin's: TTFT's ceiling.
        ceiling = (1 - rr.hit_rate) / max(1 - oracle.hit_rate, 1e-9)
        ratios.append(f"rr/oracle uncached prompt {ceiling:.1f}x")
        if wl.rr_can_hit:
            checks.append("3x n/a (round-robin hits)")
        else:
            checks.append(f"p50 >= 3x {'met' if p50 >= 3 else 'MISSED'}")
    return "; ".join(checks) or "n/a (needs oracle)", ratios


def print_workload(wl: Workload, res: dict[str, Stats], about: str) -> tuple[str, list[str]]:
    print(f"\n== {wl.name}: {wl.about}\n   {about}")
    print(
        f"{'mode':<14}{'requests':>9}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}{'out tok/s':>11}"
        f"{'hit rate':>10}{'errors':>8}{'cpu':>7}"
    )
    for mode, s in res.items():
        cores = s.cpu_seconds / s.wall if s.wall else 0.0
        print(
            f"{mode:<14}{len(s.ttft):>9}{s.p(0.5) * 1e3:>13.1f}{s.p(0.99) * 1e3:>13.1f}"
            f"{s.throughput:>11.0f}{s.hit_rate:>9.1%}{s.errors:>8}{cores:>6.2f}c"
        )
    for s in res.values():
        if s.misses is not None:
            print("   " + s.misses.line())
    summary, ratios = verdict(wl, res)
    print("   " + ", ".join(ratios))
    print("   verdict: " + summary, flush=True)
    return summary, ratios


async def main_async(args: argparse.Namespace) -> None:
    names = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    log_dir = Path(tempfile.mkdtemp(prefix="routing-quality-"))
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM unwinds like Ctrl-C: the workers and nats/etcd are stopped, not orphaned.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    infra = LocalInfra.start(log_dir / "infra")
    print(
        f"{args.workers} mocker workers, speedup-ratio {args.speedup} (times are wall-clock); "
        f"cpu = cores used by the client/router and the workers during the run, "
        f"of {os.cpu_count()}; load average at start {os.getloadavg()[0]:.1f}"
    )
    summaries: list[tuple[str, str]] = []
    try:
        for name in names:
            wl = WORKLOADS[name].quick() if args.quick else WORKLOADS[name]
            records = trace_records(wl, args.trace) if wl.is_trace else []
            res: dict[str, Stats] = {}
            for mode in args.modes.split(","):
                res[mode] = await run_mode(mode, infra, args, wl, records, log_dir)
            summary, _ = print_workload(wl, res, describe(wl, args, records))
            summaries.append((name, summary))
    finally:
        infra.stop()
    print("\nsummary")
    for name, summary in summaries:
        print(f"  {name:<10} {summary}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workloads", default="", help=f"comma-separated, from {','.join(WORKLOADS)} (default all)"
    )
    parser.add_argument("--modes", default="kv,round-robin,oracle", help="also: random, kv-raw")
    parser.add_argument("--quick", action="store_true", help="about a third of each workload")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--speedup", type=float, default=1.0, help="the workers' --speedup-ratio (1 = real time)"
    )
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE, help="Mooncake JSONL trace")
    parser.add_argument(
        "--prefill-block-cost",
        type=float,
        default=None,
        help="override cost_model.PREFILL_BLOCK_COST for the kv mode (exploration only)",
    )
    parser.add_argument(
        "--busy-threshold",
        type=float,
        default=None,
        help="override RoutingConfig.busy_threshold for the kv modes (exploration only)",
    )
    parser.add_argument(
        "--why-missed",
        action="store_true",
        help="for the kv modes, count the requests not sent to the worker holding their longest"
        " cached prefix, and why: that worker was over the busy threshold, or the cost terms"
        " (hit, queued prefill, decode load) put it above the chosen one",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
