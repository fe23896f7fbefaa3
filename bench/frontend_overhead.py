"""Frontend overhead: streaming chat load against mocker workers, through the real processes.

Starts nats + etcd, mocker workers and a frontend (each its own process), then
drives POST /v1/chat/completions (stream, ignore_eos, include_usage) from an
aiohttp client at fixed concurrency levels, and prints per level: req/s,
output tok/s, TTFT p50/p99, ITL p50/p99 (gap between SSE reads carrying
tokens, i.e. per token when tokens arrive one per event) and the CPU use of
the frontend, the workers and this load client (cores = CPU seconds / wall).

  python bench/frontend_overhead.py --scenario ceiling    # speedup 1000, 2 workers, 64 tokens
  python bench/frontend_overhead.py --scenario realistic  # speedup 1, 8 workers, 128 tokens
  python bench/frontend_overhead.py --url http://host:8000 --concurrency 16  # running cluster

Loopback only; each level runs a bounded number of requests within a time bound.
In the realistic scenario each level is followed by its engine-only reference:
the same closed-loop load (same streams, prompt length and round-robin spread)
driven straight into as many mocker engines inside this process, with no
frontend, gRPC or HTTP. `engine tok/s` is what the simulated GPUs deliver by
themselves; `of engine` is the share of it the cluster delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from mocker_cluster import MockerCluster  # bench/ is on sys.path when run as a script
from tandem.launcher.trace_summary import percentile as pct

SCENARIOS = {
    # Ceiling: workers answer almost at once; the frontend (and this client) is the limit.
    "ceiling": dict(
        workers=2, speedup=1000.0, max_tokens=64, concurrency=[1, 16, 64], requests=3000
    ),
    # Realistic cadence: ~6 ms per decode step, one SSE event per token.
    "realistic": dict(
        workers=8,
        speedup=1.0,
        max_tokens=128,
        concurrency=[32, 128, 256, 512],
        requests=4000,
        engine_reference=True,
    ),
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class LevelResult:
    concurrency: int
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    wall: float = 0.0
    engine_tok_s: float = 0.0  # engine-only reference, when measured
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    frontend_cores: float = 0.0
    worker_cores: float = 0.0
    client_cores: float = 0.0


async def one_request(
    session: aiohttp.ClientSession, url: str, body: bytes, result: LevelResult
) -> None:
    start = time.perf_counter()
    first = 0.0
    last = 0.0
    tokens = 0
    usage_tokens = 0
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            if resp.status != 200:
                await resp.read()
                result.errors += 1
                return
            tail = b""
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                n = chunk.count(b'{"content":')
                if n:
                    tokens += n
                    if not first:
                        first = now
                    else:
                        result.itl.append(now - last)
                    last = now
                if b'"usage"' in chunk or tail:
                    tail += chunk
        match = re.search(rb'"completion_tokens":(\d+)', tail)
        usage_tokens = int(match.group(1)) if match else tokens
        match = re.search(rb'"prompt_tokens":(\d+)', tail)
        result.prompt_tokens += int(match.group(1)) if match else 0
    except (TimeoutError, aiohttp.ClientError):
        result.errors += 1
        return
    result.requests += 1
    result.tokens += usage_tokens
    if first:
        result.ttft.append(first - start)


async def run_level(
    url: str,
    model: str,
    concurrency: int,
    max_tokens: int,
    max_requests: int,
    max_seconds: float,
    pids: dict[str, list[int]],
) -> LevelResult:
    result = LevelResult(concurrency)
    endpoint = f"{url}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm up connections and the frontend's worker channels.
        warm = json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": "warm"}],
                "max_tokens": 2,
                "stream": True,
                "ignore_eos": True,
            }
        ).encode()
        await asyncio.gather(
            *(one_request(session, endpoint, warm, LevelResult(0)) for _ in range(concurrency))
        )

        issued = 0
        deadline = time.perf_counter() + max_seconds

        async def user(uid: int) -> None:
            nonlocal issued
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                body = json.dumps(
                    {
                        "model": model,
                        "max_tokens": max_tokens,
                        "stream": True,
                        "ignore_eos": True,
                        "stream_options": {"include_usage": True},
                        "messages": [
                            {
                                "role": "user",
                                "content": f"user {uid} request {issued}: tell me a story",
                            }
                        ],
                    }
                ).encode()
                await one_request(session, endpoint, body, result)

        cpu0 = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
        client0 = self_cpu()
        start = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(concurrency)))
        result.wall = time.perf_counter() - start
        cpu1 = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
        result.client_cores = (self_cpu() - client0) / result.wall
        result.frontend_cores = (cpu1.get("frontend", 0) - cpu0.get("frontend", 0)) / result.wall
        result.worker_cores = (cpu1.get("workers", 0) - cpu0.get("workers", 0)) / result.wall
    return result


def reference_prompt(n: int, length: int) -> list[int]:
    """Prompt `n` of the engine reference: a first block shared by all (as a chat
    template's system prompt is), then tokens of its own."""
    return list(range(16)) + [1000 + (n * 7 + k) % 40000 for k in range(length - 16)]


async def engine_reference(
    workers: int,
    speedup: float,
    concurrency: int,
    max_tokens: int,
    prompt_len: int,
    max_requests: int,
    max_seconds: float,
) -> float:
    """Output tok/s of `workers` in-process mocker engines under the same closed-loop load."""
    from tandem.worker.engine import EngineRequest, SamplingConfig
    from tandem.worker.kv_publisher import KvEventPublisher
    from tandem.worker.mocker import MockerConfig, MockerEngine

    engines = [
        MockerEngine(MockerConfig(speedup_ratio=speedup), KvEventPublisher(f"reference-{i}"))
        for i in range(workers)
    ]
    for engine in engines:
        await engine.start()
    issued = tokens = 0
    sampling = SamplingConfig(max_tokens=max_tokens, ignore_eos=True)
    deadline = time.perf_counter() + max_seconds

    async def user() -> None:
        nonlocal issued, tokens
        while issued < max_requests and time.perf_counter() < deadline:
            n = issued
            issued += 1
            request = EngineRequest(f"reference-{n}", reference_prompt(n, prompt_len), sampling)
            async for out in engines[n % workers].generate(request):
                tokens += len(out.token_ids)

    start = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    for engine in engines:
        await engine.stop()
    return tokens / wall


def print_table(title: str, results: list[LevelResult]) -> None:
    print(f"\n{title}")
    header = (
        f"{'conc':>5} {'reqs':>6} {'err':>4} {'req/s':>8} {'tok/s':>8} {'TTFT p50':>9} "
        f"{'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'frontend':>9} {'fe/req':>8} "
        f"{'fe/tok':>7} {'workers':>8} {'client':>7}"
    )
    with_reference = any(r.engine_tok_s for r in results)
    if with_reference:
        header += f" {'engine tok/s':>13} {'of engine':>10}"
    print(header)
    print("-" * len(header))
    for r in results:
        ms = 1e3
        fe_seconds = r.frontend_cores * r.wall
        print(
            f"{r.concurrency:>5} {r.requests:>6} {r.errors:>4} {r.requests / r.wall:>8.1f} "
            f"{r.tokens / r.wall:>8.0f} {pct(r.ttft, 0.5) * ms:>7.2f}ms "
            f"{pct(r.ttft, 0.99) * ms:>7.2f}ms "
            f"{pct(r.itl, 0.5) * ms:>6.2f}ms {pct(r.itl, 0.99) * ms:>6.2f}ms "
            f"{r.frontend_cores:>5.2f} cpu {fe_seconds / max(r.requests, 1) * 1e3:>6.3f}ms "
            f"{fe_seconds / max(r.tokens, 1) * 1e6:>5.1f}us "
            f"{r.worker_cores:>4.2f} cpu {r.client_cores:>7.2f}"
            + (
                f" {r.engine_tok_s:>13.0f} {r.tokens / r.wall / r.engine_tok_s:>9.1%}"
                if with_reference and r.engine_tok_s
                else ""
            )
        )
    print(
        "(cpu: cores used = CPU seconds / wall seconds; fe/req, fe/tok: frontend CPU per request"
        " and per output token;\n ITL: gap between client reads that carry tokens)"
    )


async def bench(args: argparse.Namespace) -> None:
    scenario = SCENARIOS[args.scenario]
    workers = args.workers or scenario["workers"]
    speedup = args.speedup or scenario["speedup"]
    max_tokens = args.max_tokens or scenario["max_tokens"]
    levels = args.concurrency or scenario["concurrency"]
    max_requests = args.requests or scenario["requests"]
    cluster = None
    pids: dict[str, list[int]] = {}
    if args.url:
        url, model = args.url, args.model
    else:
        log_dir = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
        worker_args = ["--speedup-ratio", str(speedup), "--max-num-seqs", "1024"]
        cluster = MockerCluster(workers, args.router_mode, log_dir, worker_args)
        url = cluster.url
        model = cluster.model()
        assert cluster.frontend is not None
        pids = {"frontend": [cluster.frontend.pid], "workers": [w.pid for w in cluster.workers]}
    try:
        results = []
        for concurrency in levels:
            result = await run_level(
                url, model, concurrency, max_tokens, max_requests, args.seconds, pids
            )
            if cluster is not None and scenario.get("engine_reference") and result.requests:
                result.engine_tok_s = await engine_reference(
                    workers,
                    speedup,
                    concurrency,
                    max_tokens,
                    round(result.prompt_tokens / result.requests),
                    max_requests,
                    args.seconds,
                )
            results.append(result)
        title = (
            f"{args.scenario}: {workers} mocker workers, speedup {speedup:g}, "
            f"{max_tokens}-token streams, "
            f"router {args.router_mode}, {os.cpu_count()} CPUs"
        )
        print_table(title, results)
    finally:
        if cluster is not None:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="ceiling")
    parser.add_argument(
        "--workers", type=int, default=0, help="mocker workers (default: per scenario)"
    )
    parser.add_argument(
        "--speedup", type=float, default=0.0, help="mocker speedup ratio (default: per scenario)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=0, help="tokens per stream (default: per scenario)"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="*", help="concurrency levels (default: per scenario)"
    )
    parser.add_argument("--requests", type=int, default=0, help="most requests per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="most seconds per level")
    parser.add_argument(
        "--router-mode", default="round-robin", choices=("kv", "round-robin", "random")
    )
    parser.add_argument(
        "--url", default="", help="benchmark a running frontend instead of starting a cluster"
    )
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(bench(args))
    except ImportError:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
