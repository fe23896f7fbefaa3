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

With `--simulated` the same configurations run on the fleet simulator
instead (services/launcher/fleet_sim.py: the real router, the frontend's
conditional rule, the mocker's schedulers and block managers and its simulated
KV transfer, on a simulated clock in this process): no machine noise, the
same figures every run. The streams' first sends are spread over `--ramp-up`
simulated seconds (equal requests sent at one instant would stay in lockstep);
the CPU column is then the seconds of CPU each simulation took.

After the table, each split's checks against the first `agg` row of the run
(the issue's targets): ITL p99 / ITL p50 of its streams (<= 1.5), agg ITL p99 /
its ITL p99 (>= 5), TTFT p99 / agg's (<= 1), req/s / agg's (>= 1), goodput /
agg's (>= 1.3); with `--mixed`, the conditional rule's goodput against
always-remote's and never-remote's (> 1).

  python bench/disagg.py                      # agg 8, 4:4, 2:6, 3:5; speedup 1
  python bench/disagg.py --mixed --splits 4:4
  python bench/disagg.py --rounds 2           # every configuration twice, alternated
  python bench/disagg.py --simulated [--mixed]
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
from tandem.launcher.fleet_config import FleetConfig
from tandem.launcher.fleet_sim import run_fleet
from tandem.launcher.mooncake_trace import TraceRecord
from tandem.launcher.trace_summary import percentile
from tandem.runtime.config import parse_config
from tandem.worker.mocker import MockerConfig

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


def simulate_setup(setup: Setup, args: argparse.Namespace, mocker: MockerConfig) -> Outcome:
    """`setup` on the fleet simulator: the same closed loop, on simulated time."""
    out = Outcome(setup)
    block_tokens = mocker.scheduler.kv_cache_block_size
    records = []
    for i in range(args.requests):
        n = args.short_tokens if args.mixed and i % 2 else args.prompt_tokens
        # Hash ids of their own: every prompt unique, as prompt_of's random ids are.
        first = i * (-(-max(args.prompt_tokens, args.short_tokens) // block_tokens))
        blocks = tuple(range(first, first + -(-n // block_tokens)))
        records.append(TraceRecord(0.0, n, args.output_tokens, blocks))
    layout = (
        {"workers": setup.aggregated}
        if setup.aggregated
        else {"prefill_workers": setup.prefill, "decode_workers": setup.decode}
    )
    config = FleetConfig(
        **layout,
        concurrency=args.concurrency,
        ramp_up=args.ramp_up,
        block_tokens=block_tokens,
        seed=args.seed,
        max_local_prefill_length=setup.max_local_prefill_length,
        max_prefill_queue_size=args.max_prefill_queue_size,
        mocker=mocker,
    )
    cpu0 = time.process_time()
    sim = run_fleet(records, config, setup.label)
    out.cpu = {"simulation": time.process_time() - cpu0}
    out.ttft = [t.ttft for t in sim.timings]
    out.mean_itl = [t.mean_itl for t in sim.timings]
    out.itl = sim.result.itl
    out.errors = sim.result.num_errors
    out.wall = sim.result.wall
    if sim.disagg is not None:
        out.decisions = dict(sim.disagg.decisions)
    return out


def table(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    cpu_header = "cpu s" if args.simulated else "cpu fe/wk/cl"
    header = (
        f"{'config':<18} {'ok':>4} {'err':>3} {'req/s':>6} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'ITL p50':>8} {'ITL p99':>8} {'goodput':>8} {'remote':>6} {'local':>6} "
        f"{cpu_header:>13}"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        remote = sum(v for k, v in o.decisions.items() if k.startswith("remote:"))
        local = sum(v for k, v in o.decisions.items() if k.startswith("local:"))
        if args.simulated:
            cpu = f"{o.cpu.get('simulation', 0):.2f}"
        else:
            cpu = "/".join(f"{o.cpu.get(k, 0):.2f}" for k in ("frontend", "workers", "client"))
        lines.append(
            f"{o.setup.label:<18} {len(o.ttft):>4} {o.errors:>3} {len(o.ttft) / o.wall:>6.2f} "
            f"{percentile(o.ttft, 0.5) * 1e3:>7.0f}ms {percentile(o.ttft, 0.99) * 1e3:>7.0f}ms "
            f"{percentile(o.itl, 0.5) * 1e3:>6.1f}ms {percentile(o.itl, 0.99) * 1e3:>6.1f}ms "
            f"{o.goodput(args.ttft_slo, args.itl_slo):>8.2f} {remote:>6.0f} {local:>6.0f} "
            f"{cpu:>13}"
        )
    return "\n".join(lines)


def _check(value: float, target: float, at_least: bool) -> str:
    ok = value >= target if at_least else value <= target
    return f"{value:.2f} {'ok' if ok else 'MISS'}"


def target_checks(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    """Each split's ratios against the run's first agg row (the issue's targets), or with
    --mixed the conditional rule's goodput against the other two rules of its split."""
    slo = (args.ttft_slo, args.itl_slo)
    if args.mixed:
        header = f"{'goodput ratio':<18} {'vs always-remote':>17} {'vs never-remote':>16}"
        lines = [header, f"{'target':<18} {'> 1':>17} {'> 1':>16}"]
        by_label = {o.setup.label: o for o in outcomes}
        for o in outcomes:
            if not o.setup.label.endswith(" conditional"):
                continue
            split = o.setup.label.removesuffix(" conditional")
            mine = o.goodput(*slo)
            cells = []
            for other in ("always-remote", "never-remote"):
                theirs = by_label[f"{split} {other}"].goodput(*slo)
                ratio = mine / theirs if theirs else float("inf")
                cells.append(f"{ratio:.2f} {'ok' if ratio > 1 else 'MISS'}")
            lines.append(f"{split:<18} {cells[0]:>17} {cells[1]:>16}")
        return "\n".join(lines)
    agg = next((o for o in outcomes if o.setup.aggregated), None)
    if agg is None:
        return "(no agg row to compare with)"
    agg_itl99 = percentile(agg.itl, 0.99)
    agg_ttft99 = percentile(agg.ttft, 0.99)
    agg_rate = len(agg.ttft) / agg.wall
    agg_good = agg.goodput(*slo)
    header = (
        f"{'vs ' + agg.setup.label:<18} {'ITL p99/p50':>12} {'agg/ITL p99':>12} "
        f"{'TTFT p99/agg':>13} {'req/s/agg':>10} {'goodput/agg':>12}"
    )
    lines = [
        header,
        f"{'target':<18} {'<= 1.5':>12} {'>= 5':>12} {'<= 1':>13} {'>= 1':>10} {'>= 1.3':>12}",
    ]
    for o in outcomes:
        if o.setup.aggregated:
            continue
        itl99 = percentile(o.itl, 0.99)
        cells = [
            _check(itl99 / percentile(o.itl, 0.5), 1.5, at_least=False),
            _check(agg_itl99 / itl99, 5.0, at_least=True),
            _check(percentile(o.ttft, 0.99) / agg_ttft99, 1.0, at_least=False),
            _check(len(o.ttft) / o.wall / agg_rate, 1.0, at_least=True),
            _check(o.goodput(*slo) / agg_good if agg_good else float("inf"), 1.3, at_least=True),
        ]
        lines.append(
            f"{o.setup.label:<18} {cells[0]:>12} {cells[1]:>12} {cells[2]:>13} {cells[3]:>10} "
            f"{cells[4]:>12}"
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
    parser.add_argument(
        "--simulated", action="store_true", help="on the fleet simulator, not a live cluster"
    )
    parser.add_argument(
        "--ramp-up", type=float, default=1.0, help="--simulated: streams start over this (s)"
    )
    args, worker_args = parser.parse_known_args()
    worker_args = worker_args or ["--speedup-ratio", "1"]
    # --simulated: the flags after ours are every simulated worker's mocker flags.
    mocker = parse_config(MockerConfig, worker_args, environ={}) if args.simulated else None
    outcomes = []
    for _ in range(args.rounds):
        for setup in setups(args):
            if mocker is not None:
                outcome = simulate_setup(setup, args, mocker)
            else:
                outcome = run_setup(setup, args, worker_args)
            print(table([outcome], args).splitlines()[-1], flush=True)
            outcomes.append(outcome)
    print()
    print(
        f"{args.requests} requests, {args.concurrency} in flight, prompts "
        f"{args.prompt_tokens}{f'/{args.short_tokens}' if args.mixed else ''} tokens, "
        f"{args.output_tokens} out; workers: {' '.join(worker_args)}; goodput: TTFT <= "
        f"{args.ttft_slo}s and mean ITL <= {args.itl_slo * 1e3:.0f}ms"
        + (f"; simulated, streams started over {args.ramp_up:g} s" if args.simulated else "")
    )
    print(table(outcomes, args))
    print()
    print(target_checks(outcomes, args))


if __name__ == "__main__":
    main()
