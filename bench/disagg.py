"""Disaggregated vs aggregated serving on a live mocker cluster: closed loop, long unique prompts.

Each configuration gets a fresh cluster (nats + etcd, mocker worker processes,
a frontend) and the same closed loop: `--concurrency` streams in flight, each
a unique `--prompt-tokens` prompt (token ids) with `--output-tokens` outputs
(`ignore_eos`), until `--requests` have finished. Configurations:
- `agg N`: N aggregated workers;
- `P:D`: P prefill + D decode workers, the frontend's conditional rule on
  (`--max-local-prefill-length`, default 1000).
With `--mixed`, half the prompts are `--short-tokens` long and the P:D split
runs three ways: the conditional rule, always remote (length 0) and never
remote (length 10^9).

Per configuration: req/s, TTFT p50/p99 (send to first token), ITL p50/p99
(gaps between token deliveries, spread over their tokens), goodput (req/s of
requests with TTFT <= `--ttft-slo` and mean ITL <= `--itl-slo`), the remote
and local decisions, and the CPU seconds the frontend, the workers and this
client used per wall second (the machine is shared: when they near the cores,
the timings are the machine's, not the mocker's step-time model).

  python bench/disagg.py                      # agg 8, 4:4, 2:6, 3:5; speedup 1
  python bench/disagg.py --mixed --splits 4:4
  python bench/disagg.py --rounds 2           # every configuration twice, alternated
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from frontend_overhead import cpu_seconds, self_cpu  # bench/ is on sys.path as a script
from mocker_cluster import MockerCluster
from tandem.launcher.trace_summary import percentile

VOCAB = 49152


@dataclass(frozen=True, slots=True)
class Setup:
    """One configuration: pools and the frontend's rule."""

    label: str
    prefill: int
    decode: int
    aggregated: int = 0
    max_local_prefill_length: int = 1000

    def worker_processes(self, per_process: int) -> list[list[str]]:
        """Each worker process's role flags (mocker workers of one role share a process)."""
        procs = []
        for role, count in (
            ("aggregated", self.aggregated),
            ("prefill", self.prefill),
            ("decode", self.decode),
        ):
            while count > 0:
                n = min(count, per_process)
                procs.append(["--disaggregation-mode", role, "--num-workers", str(n)])
                count -= n
        return procs


@dataclass
class Outcome:
    """What one configuration's run measured."""

    setup: Setup
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    mean_itl: list[float] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0
    decisions: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    def goodput(self, ttft_slo: float, itl_slo: float) -> float:
        good = sum(
            1
            for t, i in zip(self.ttft, self.mean_itl, strict=True)
            if t <= ttft_slo and i <= itl_slo
        )
        return good / self.wall if self.wall else 0.0


async def one_request(session: aiohttp.ClientSession, url: str, body: bytes, out: Outcome) -> None:
    """One streamed completion: its TTFT, every ITL gap and its mean ITL go into `out`."""
    start = time.perf_counter()
    times: list[float] = []
    itl: list[float] = []
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            if resp.status != 200:
                out.errors += 1
                return
            pending = b""
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                *events, pending = (pending + chunk).split(b"\n\n")
                tokens = sum(1 for e in events if b'"text":"' in e and b'"text":""' not in e)
                if b'{"error"' in chunk:
                    out.errors += 1
                    return
                if not tokens:
                    continue
                if times:
                    itl.extend([(now - times[-1]) / tokens] * tokens)
                times.append(now)
    except (TimeoutError, aiohttp.ClientError):
        out.errors += 1
        return
    if not times:
        out.errors += 1
        return
    out.ttft.append(times[0] - start)
    out.itl.extend(itl)
    out.mean_itl.append(sum(itl) / len(itl) if itl else 0.0)


def prompt_of(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(100, VOCAB) for _ in range(n)]


async def closed_loop(url: str, model: str, args: argparse.Namespace, out: Outcome) -> None:
    rng = random.Random(args.seed)
    lengths = [
        args.short_tokens if args.mixed and i % 2 else args.prompt_tokens
        for i in range(args.requests)
    ]
    bodies = [
        json.dumps(
            {
                "model": model,
                "prompt": prompt_of(rng, n),
                "max_tokens": args.output_tokens,
                "ignore_eos": True,
                "stream": True,
            },
            separators=(",", ":"),
        ).encode()  # fmt: skip
        for n in lengths
    ]
    endpoint = f"{url}/v1/completions"
    queue = list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def stream_loop() -> None:
            while queue:
                await one_request(session, endpoint, queue.pop(), out)

        start = time.perf_counter()
        await asyncio.gather(*(stream_loop() for _ in range(args.concurrency)))
        out.wall = time.perf_counter() - start


def scrape_decisions(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tandem_frontend_disagg_decisions_total{"):
            labels = line[line.index("{") + 1 : line.index("}")]
            parts = dict(p.split("=", 1) for p in labels.split(","))
            key = f"{parts['decision'].strip(chr(34))}:{parts['reason'].strip(chr(34))}"
            found[key] = found.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def run_setup(setup: Setup, args: argparse.Namespace, worker_args: list[str]) -> Outcome:
    out = Outcome(setup)
    procs = setup.worker_processes(args.workers_per_process)
    with tempfile.TemporaryDirectory(prefix="bench-disagg-") as tmp:
        cluster = MockerCluster(
            len(procs),
            "kv",
            Path(tmp),
            worker_args=worker_args,
            frontend_args=[
                "--grpc-port",
                "0",
                "--max-local-prefill-length",
                str(setup.max_local_prefill_length),
                "--max-prefill-queue-size",
                str(args.max_prefill_queue_size),
            ],  # fmt: skip
            per_worker_args=procs,
            expected_workers=setup.prefill + setup.decode + setup.aggregated,
        )
        try:
            model = cluster.model()
            assert cluster.frontend is not None
            pids = {"frontend": [cluster.frontend.pid], "workers": [p.pid for p in cluster.workers]}
            cpu0 = {k: sum(map(cpu_seconds, v)) for k, v in pids.items()}
            client0 = self_cpu()
            asyncio.run(closed_loop(cluster.url, model, args, out))
            out.cpu = {k: (sum(map(cpu_seconds, v)) - cpu0[k]) / out.wall for k, v in pids.items()}
            out.cpu["client"] = (self_cpu() - client0) / out.wall
            out.decisions = scrape_decisions(cluster.url)
        finally:
            cluster.stop()
    return out


def table(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    header = (
        f"{'config':<18} {'ok':>4} {'err':>3} {'req/s':>6} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'ITL p50':>8} {'ITL p99':>8} {'goodput':>8} {'remote':>6} {'local':>6} "
        f"{'cpu fe/wk/cl':>13}"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        remote = sum(v for k, v in o.decisions.items() if k.startswith("remote:"))
        local = sum(v for k, v in o.decisions.items() if k.startswith("local:"))
        cpu = "/".join(f"{o.cpu.get(k, 0):.2f}" for k in ("frontend", "workers", "client"))
        lines.append(
            f"{o.setup.label:<18} {len(o.ttft):>4} {o.errors:>3} {len(o.ttft) / o.wall:>6.2f} "
            f"{percentile(o.ttft, 0.5) * 1e3:>7.0f}ms {percentile(o.ttft, 0.99) * 1e3:>7.0f}ms "
            f"{percentile(o.itl, 0.5) * 1e3:>6.1f}ms {percentile(o.itl, 0.99) * 1e3:>6.1f}ms "
            f"{o.goodput(args.ttft_slo, args.itl_slo):>8.2f} {remote:>6.0f} {local:>6.0f} "
            f"{cpu:>13}"
        )
    return "\n".join(lines)


def setups(args: argparse.Namespace) -> list[Setup]:
    splits = [tuple(int(x) for x in s.split(":")) for s in args.splits.split(",") if s]
    if args.mixed:
        found = []
        for p, d in splits:
            found += [
                Setup(f"{p}:{d} conditional", p, d),
                Setup(f"{p}:{d} always-remote", p, d, max_local_prefill_length=0),
                Setup(f"{p}:{d} never-remote", p, d, max_local_prefill_length=10**9),
            ]
        return found
    return [Setup(f"agg {args.aggregated}", 0, 0, args.aggregated)] + [
        Setup(f"{p}:{d}", p, d) for p, d in splits
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=3000)
    parser.add_argument("--short-tokens", type=int, default=200, help="--mixed: short prompts")
    parser.add_argument("--output-tokens", type=int, default=150)
    parser.add_argument("--aggregated", type=int, default=8, help="workers of the agg baseline")
    parser.add_argument("--splits", default="4:4,2:6,3:5", help="prefill:decode splits")
    parser.add_argument("--mixed", action="store_true", help="half short, half long prompts")
    parser.add_argument("--max-prefill-queue-size", type=int, default=32)
    parser.add_argument("--ttft-slo", type=float, default=1.0, help="goodput: TTFT at most (s)")
    parser.add_argument("--itl-slo", type=float, default=0.020, help="goodput: mean ITL (s)")
    parser.add_argument("--workers-per-process", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="every configuration this often")
    parser.add_argument("--seed", type=int, default=0)
    args, worker_args = parser.parse_known_args()
    worker_args = worker_args or ["--speedup-ratio", "1"]
    outcomes = []
    for _ in range(args.rounds):
        for setup in setups(args):
            outcome = run_setup(setup, args, worker_args)
            print(table([outcome], args).splitlines()[-1], flush=True)
            outcomes.append(outcome)
    print()
    print(
        f"{args.requests} requests, {args.concurrency} in flight, prompts "
        f"{args.prompt_tokens}{f'/{args.short_tokens}' if args.mixed else ''} tokens, "
        f"{args.output_tokens} out; workers: {' '.join(worker_args)}; goodput: TTFT <= "
        f"{args.ttft_slo}s and mean ITL <= {args.itl_slo * 1e3:.0f}ms"
    )
    print(table(outcomes, args))


if __name__ == "__main__":
    main()
