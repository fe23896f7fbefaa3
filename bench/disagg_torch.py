"""Torch engine on this CPU: 1 prefill + 1 decode worker against 2 aggregated, long prompts among decoding streams.

Each configuration gets a fresh cluster (nats + etcd, two torch worker
processes serving the default model, a frontend with the kv router) and the
same traffic for `--duration` seconds: `--streams` decoding streams back to
back (a unique `--short-tokens` prompt, `--output-tokens` tokens each,
`ignore_eos`) and, open loop every `--long-interval` seconds, one unique
`--long-tokens` prompt (`--long-output-tokens` tokens).
- `agg 2`: two aggregated workers. A long prompt's prefill runs in the engine
  step of the worker it lands on, beside that worker's decoding streams.
- `1:1`: a prefill and a decode worker. The frontend's rule at its defaults
  sends each long prompt (more than 1,000 tokens uncached) to the prefill
  worker and its KV to the decode worker, so the streams never share a step
  with a long prefill; short prompts are prefilled locally.

Printed per configuration: the decode streams' ITL p50/p99/p99.9 and max
(gaps between token deliveries; a stall behind a long prefill is one gap in a
stream of many, so it shows in the far tail) and p99/p50, the long prompts' TTFT p50/p99, the streams'
tokens/s, errors, the remote/local decisions and the CPU seconds per wall
second the workers used. Each worker runs `--threads` torch threads (1: on a
2-core machine each worker gets a core); the frontend and this client share
the same cores, so the figures are this machine's, not a GPU node's. The KV
moves over gRPC by default (`--kv-transport`), as in the recorded runs.

  python bench/disagg_torch.py
  python bench/disagg_torch.py --rounds 2 --duration 90
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

import aiohttp
from disagg import Outcome, Setup, one_request, prompt_of, scrape_decisions
from frontend_overhead import cpu_seconds  # bench/ is on sys.path as a script
from mocker_cluster import MockerCluster
from tandem.launcher.trace_summary import percentile

SETUPS = (Setup("agg 2", 0, 0, 2), Setup("1:1", 1, 1))


def body(model: str, prompt: list[int], max_tokens: int) -> bytes:
    fields = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
              "stream": True}  # fmt: skip
    return json.dumps(fields, separators=(",", ":")).encode()


async def traffic(
    url: str, model: str, setup: Setup, args: argparse.Namespace
) -> tuple[Outcome, Outcome]:
    """The decoding streams and the long prompts, for `--duration` seconds; what each measured."""
    rng = random.Random(args.seed)
    streams, longs = Outcome(setup), Outcome(setup)
    endpoint = f"{url}/v1/completions"
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        end = start + args.duration

        async def stream_loop() -> None:
            while time.perf_counter() < end:
                prompt = prompt_of(rng, args.short_tokens)
                await one_request(
                    session, endpoint, body(model, prompt, args.output_tokens), streams
                )

        async def long_prompts() -> None:
            sent: list[asyncio.Task[None]] = []
            while time.perf_counter() < end:
                prompt = prompt_of(rng, args.long_tokens)
                request = body(model, prompt, args.long_output_tokens)
                sent.append(asyncio.create_task(one_request(session, endpoint, request, longs)))
                await asyncio.sleep(args.long_interval)
            await asyncio.gather(*sent)

        await asyncio.gather(long_prompts(), *(stream_loop() for _ in range(args.streams)))
        streams.wall = longs.wall = time.perf_counter() - start
    return streams, longs


def run_setup(setup: Setup, args: argparse.Namespace) -> tuple[Outcome, Outcome]:
    worker_args = ["--num-threads", str(args.threads), "--num-kv-blocks", str(args.num_kv_blocks),
                   "--kv-transport", args.kv_transport, "--remote-prefill-timeout", "300"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-disagg-torch-") as tmp:
        cluster = MockerCluster(
            2,
            "kv",
            Path(tmp),
            worker_args=worker_args,
            per_worker_args=setup.worker_processes(1),
            engine="torch",
        )
        try:
            model = cluster.model()
            cpu0 = sum(cpu_seconds(p.pid) for p in cluster.workers)
            streams, longs = asyncio.run(traffic(cluster.url, model, setup, args))
            streams.cpu["workers"] = (
                sum(cpu_seconds(p.pid) for p in cluster.workers) - cpu0
            ) / streams.wall
            streams.decisions = scrape_decisions(cluster.url)
        finally:
            cluster.stop()
    return streams, longs


def table(results: list[tuple[Outcome, Outcome]]) -> str:
    header = (
        f"{'config':<8} {'streams':>7} {'ITL p50':>8} {'ITL p99':>8} {'p99.9':>8} {'max':>8} "
        f"{'p99/p50':>7} {'tok/s':>6} "
        f"{'long':>4} {'TTFT p50':>9} {'TTFT p99':>9} {'err':>3} {'remote':>6} {'local':>5} "
        f"{'cpu wk':>6}"
    )
    lines = [header, "-" * len(header)]
    for streams, longs in results:
        p50, p99 = percentile(streams.itl, 0.5), percentile(streams.itl, 0.99)
        p999, worst = percentile(streams.itl, 0.999), max(streams.itl, default=0.0)
        tokens = len(streams.itl) + len(streams.ttft)
        remote = sum(v for k, v in streams.decisions.items() if k.startswith("remote:"))
        local = sum(v for k, v in streams.decisions.items() if k.startswith("local:"))
        lines.append(
            f"{streams.setup.label:<8} {len(streams.ttft):>7} {p50 * 1e3:>6.1f}ms {p99 * 1e3:>6.1f}ms "
            f"{p999 * 1e3:>6.0f}ms {worst * 1e3:>6.0f}ms "
            f"{p99 / p50 if p50 else 0:>7.1f} {tokens / streams.wall:>6.1f} {len(longs.ttft):>4} "
            f"{percentile(longs.ttft, 0.5) * 1e3:>7.0f}ms {percentile(longs.ttft, 0.99) * 1e3:>7.0f}ms "
            f"{streams.errors + longs.errors:>3} {remote:>6.0f} {local:>5.0f} "
            f"{streams.cpu['workers']:>6.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--streams", type=int, default=3, help="decoding streams in flight")
    parser.add_argument("--short-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--long-tokens", type=int, default=1200)
    parser.add_argument("--long-output-tokens", type=int, default=4)
    parser.add_argument(
        "--long-interval", type=float, default=6.0, help="seconds between long prompts"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    parser.add_argument("--num-kv-blocks", type=int, default=1024)
    parser.add_argument("--kv-transport", default="grpc", help="nixl or grpc")
    parser.add_argument("--rounds", type=int, default=1, help="every configuration this often")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = [run_setup(setup, args) for _ in range(args.rounds) for setup in SETUPS]
    print(
        f"torch engine, 2 workers x {args.threads} thread(s); {args.streams} streams of "
        f"{args.short_tokens}+{args.output_tokens} tokens, a {args.long_tokens}-token prompt every "
        f"{args.long_interval:g} s, {args.duration:g} s"
    )
    print(table(results))


if __name__ == "__main__":
    main()
