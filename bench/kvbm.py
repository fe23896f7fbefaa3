"""Tiered KV cache (KVBM): multi-turn chats whose contexts outgrow the device pool.

Workload (the seed's): `--users` users (80) chat for `--rounds` rounds (10). Each
user has a document of `--doc-tokens` tokens (3,000) at the start of every
prompt; a round appends a short user turn (`--turn-tokens`) to the history
and the answer (`--output-tokens`, `ignore_eos`) comes back in the next
round's prompt, so each prompt re-sends the whole conversation as text to
POST /v1/completions (the frontend tokenizes it). Rounds go out round-major,
the users in a fresh random order each round, through a closed loop of
`--concurrency` streams (a user's next round waits for its previous answer):
between two visits of one user every other user comes by, so a device pool
that holds a fraction of the contexts has evicted that user's blocks.

Pools per worker, from the users' final contexts (`working set`):
`--device-fraction` of it across the fleet (never less than the requests in
flight need), a host tier of `--host-fraction` and a disk tier of
`--disk-fraction`. Configurations (`--configs`), each on a fresh cluster
(nats + etcd, workers, a frontend with the kv router):
- `off`: the device pool only;
- `host`: `--connector kvbm --kvbm-storage-tiers hbm,host_dram`;
- `host+disk`: also `nvme_ssd` under a fresh `--kvbm-nvme-path`;
- `NAME@R`: NAME with `--kvbm-offload-ratio R` (0 = write-through, 1 = on eviction).
`tier_flags` is the one place configurations become worker flags.

Printed per configuration: req/s, output tok/s, TTFT p50/p99 (send to first
token), ITL p50, `cached` (usage.prompt_tokens_details.cached_tokens / prompt
tokens), the prefix hit rate per tier from the workers' /metrics, the ratios
to `off` measured in the same run, and `load` (the machine's load average
during the runs: on a shared machine the timings are partly the neighbours');
then per configuration the workers' KVBM counters. `--repeat N` runs the
configurations N times, alternated, and pools each one's figures.

`--probe` (torch engine): a returning conversation of `--probe-tokens` (2,000)
after two others of the same length pushed it out of a device pool that holds
about one and a half of them; time to its first token with `off`
(recomputed) and `host` (onboarded from host memory), and a device hit for
scale.

  python bench/kvbm.py --workers 2                          # mocker, off/host/host+disk
  python bench/kvbm.py --workers 2 --configs off,host@0,host@0.7,host@1
  python bench/kvbm.py --engine torch --users 16 --rounds 4 --doc-tokens 1500 \\
      --output-tokens 8 --concurrency 2
  python bench/kvbm.py --engine torch --probe
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
from mocker_cluster import MockerCluster  # bench/ is on sys.path when run as a script
from prometheus_client.parser import text_string_to_metric_families
from tandem.launcher.local_infra import free_port
from tandem.launcher.trace_summary import ReplayResult, percentile
from tandem.runtime.kv_tiers import DEVICE_TIER, DISK_TIER, HOST_TIER, TIERS
from tandem.runtime.model_card import default_model_path
from tandem.runtime.tokenizer import Tokenizer
from trace_replay import one_request


@dataclass(frozen=True, slots=True)
class Workload:
    """What the users send."""

    users: int = 80
    rounds: int = 10
    doc_tokens: int = 3000
    turn_tokens: int = 48
    output_tokens: int = 32
    concurrency: int = 16
    seed: int = 0

    @property
    def context_tokens(self) -> int:
        """One user's conversation after its last answer (about: words are ~1 token)."""
        return self.doc_tokens + self.rounds * (self.turn_tokens + self.output_tokens + 4)


@dataclass(frozen=True, slots=True)
class Setup:
    """One configuration: the tiers below the device pool and when blocks are written down."""

    label: str
    host: bool = False
    disk: bool = False
    offload_ratio: float | None = None
    """--kvbm-offload-ratio; None = the worker's default."""


DEFAULTS = Workload()

SETUPS = {"off": Setup("off"), "host": Setup("host", host=True)}
SETUPS["host+disk"] = Setup("host+disk", host=True, disk=True)


def parse_setup(spec: str) -> Setup:
    """`off`, `host`, `host+disk`, each optionally `@R` for an offload ratio."""
    name, _, ratio = spec.partition("@")
    if name not in SETUPS:
        raise ValueError(f"unknown configuration {spec!r}: one of {', '.join(SETUPS)} [@R]")
    if not ratio:
        return SETUPS[name]
    if name == "off":
        raise ValueError("off has no offload ratio")
    return replace(SETUPS[name], label=spec, offload_ratio=float(ratio))


@dataclass(frozen=True, slots=True)
class Pools:
    """Blocks per worker in each tier."""

    block_size: int
    device: int
    host: int
    disk: int


def size_pools(wl: Workload, workers: int, args: argparse.Namespace) -> Pools:
    working_set = wl.users * wl.context_tokens / workers
    # In flight: a worker may hold more than its share of the streams (the kv router
    # follows the hits), so room for 1.5 times its share, and for one whole context.
    in_flight = max(1.5 * wl.concurrency / workers, 1) * wl.context_tokens
    blocks = lambda tokens: -(-int(tokens) // args.block_size)  # noqa: E731
    return Pools(
        args.block_size,
        device=blocks(max(args.device_fraction * working_set, in_flight)),
        host=blocks(args.host_fraction * working_set),
        disk=blocks(args.disk_fraction * working_set),
    )


def tier_flags(setup: Setup, pools: Pools, nvme_dir: Path, args: argparse.Namespace) -> list[str]:
    """The worker flags of `setup`: where configurations meet the KVBM flags."""
    flags = ["--num-kv-blocks", str(pools.device), "--kv-cache-block-size", str(pools.block_size)]
    if not setup.host:
        return flags
    tiers = [DEVICE_TIER, HOST_TIER, *([DISK_TIER] if setup.disk else [])]
    flags += ["--connector", "kvbm", "--kvbm-storage-tiers", ",".join(tiers)]
    flags += ["--num-host-blocks", str(pools.host)]
    if setup.disk:
        flags += ["--num-disk-blocks", str(pools.disk), "--kvbm-nvme-path", str(nvme_dir)]
    if setup.offload_ratio is not None:
        flags += ["--kvbm-offload-ratio", f"{setup.offload_ratio:g}"]
    if args.engine == "mocker":
        if args.host_bandwidth:
            flags += ["--kvbm-host-bandwidth", f"{args.host_bandwidth:g}"]
        if args.disk_bandwidth and setup.disk:
            flags += ["--kvbm-disk-bandwidth", f"{args.disk_bandwidth:g}"]
    return flags


class Words:
    """Random text about one token per word: words that are single tokens of the model."""

    def __init__(self) -> None:
        tokenizer = Tokenizer.from_path(default_model_path())
        single = re.compile(rb" [a-z]{3,10}")
        self.words = [
            piece.decode()
            for i in range(tokenizer.vocab_size)
            if single.fullmatch(piece := tokenizer.token_bytes(i))
        ]

    def text(self, rng: random.Random, n: int) -> str:
        return "".join(rng.choices(self.words, k=n))


def completion_body(model: str, prompt: str, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()


async def drive(url: str, model: str, wl: Workload, words: Words, result: ReplayResult) -> None:
    """Every user's rounds through `wl.concurrency` streams, round-major, users shuffled."""
    rng = random.Random(wl.seed)
    histories = [words.text(rng, wl.doc_tokens) for _ in range(wl.users)]
    order: list[tuple[int, int]] = []
    for r in range(wl.rounds):
        users = list(range(wl.users))
        rng.shuffle(users)
        order += [(r, u) for u in users]
    pending = iter(order)
    # FIFO locks: a user's round waits for the previous round's answer, in order.
    locks = [asyncio.Lock() for _ in range(wl.users)]
    endpoint = f"{url}/v1/completions"

    async def stream(session: aiohttp.ClientSession) -> None:
        for r, u in pending:
            async with locks[u]:
                turn_rng = random.Random(wl.seed * 1_000_003 + u * 1009 + r)
                histories[u] += "\nUser:" + words.text(turn_rng, wl.turn_tokens) + "\nAssistant:"
                answer: list[str] = []
                result.sent += 1
                body = completion_body(model, histories[u], wl.output_tokens)
                await one_request(session, endpoint, body, result, answer)
                histories[u] += "".join(answer)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(stream(session) for _ in range(wl.concurrency)))
        result.wall = time.perf_counter() - start


# -- the workers' /metrics ----------------------------------------------------------


HIT_BLOCKS = "hit_blocks"
"""Key of the blocks each tier served, summed over workers (their `tandem_kvbm_hit_rate`
times their `tandem_kvbm_lookup_blocks_total`: a rate does not add up across workers)."""


def scrape(ports: Sequence[int]) -> dict[tuple[str, str], float]:
    """(sample name, its tier or copy kind) -> value summed over the workers, for the
    worker's prompt-token counters and every `tandem_kvbm_*` sample."""
    totals: dict[tuple[str, str], float] = defaultdict(float)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        rates: dict[str, float] = {}
        lookups = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels = sample.name, sample.labels
                key = labels.get("tier") or labels.get("kind") or ""
                if name == "tandem_kvbm_hit_rate":
                    rates[key] = sample.value
                elif name == "tandem_kvbm_memory_utilization_percent":
                    totals[name, key] += sample.value / len(ports)  # the mean
                elif name.startswith("tandem_kvbm_") or name in (
                    "tandem_worker_prompt_tokens_total",
                    "tandem_worker_cached_prompt_tokens_total",
                    "tandem_worker_preemptions_total",
                ):
                    totals[name, key] += sample.value
                if name == "tandem_kvbm_lookup_blocks_total":
                    lookups = sample.value
        for tier, rate in rates.items():
            totals[HIT_BLOCKS, tier] += rate * lookups
    return dict(totals)


def tier_hits(setup: Setup, metrics: dict[tuple[str, str], float]) -> dict[str, float]:
    """Share of prompt blocks each tier served, for the tiers `setup` has: the KVBM's own
    hit rates (blocks looked up at admission), or without KVBM the device prefix cache's
    cached / prompt tokens."""
    if not setup.host:
        prompt = metrics.get(("tandem_worker_prompt_tokens_total", ""), 0.0)
        cached = metrics.get(("tandem_worker_cached_prompt_tokens_total", ""), 0.0)
        return {DEVICE_TIER: cached / prompt} if prompt else {}
    lookups = metrics.get(("tandem_kvbm_lookup_blocks_total", ""), 0.0)
    if not lookups:
        return {}
    on = {DEVICE_TIER: True, HOST_TIER: setup.host, DISK_TIER: setup.disk}
    return {t: metrics.get((HIT_BLOCKS, t), 0.0) / lookups for t in TIERS if on[t]}


# -- one configuration on a fresh cluster ---------------------------------------------


@dataclass
class Outcome:
    setup: Setup
    result: ReplayResult
    metrics: dict[tuple[str, str], float] = field(default_factory=dict)
    probe: dict[str, list[float]] = field(default_factory=dict)
    probe_cached: dict[str, list[int]] = field(default_factory=dict)
    runs: int = 1
    load: list[float] = field(default_factory=list)
    """The machine's 1-minute load average at the start and end of each run."""

    def merge(self, other: Outcome) -> Outcome:
        """This configuration's figures pooled with another run's (`--repeat`)."""
        a, b = self.result, other.result
        pooled = ReplayResult(
            a.label, a.sent + b.sent, a.ok + b.ok, a.errors + b.errors, a.ttft + b.ttft,
            a.itl + b.itl, [], a.output_tokens + b.output_tokens,
            a.prompt_tokens + b.prompt_tokens, a.cached_tokens + b.cached_tokens,
            a.wall + b.wall,
        )  # fmt: skip
        metrics = dict(self.metrics)
        for key, value in other.metrics.items():
            metrics[key] = metrics.get(key, 0.0) + value
        probe = {k: v + other.probe.get(k, []) for k, v in self.probe.items()}
        cached = {k: v + other.probe_cached.get(k, []) for k, v in self.probe_cached.items()}
        return Outcome(self.setup, pooled, metrics, probe, cached, self.runs + other.runs,
                       self.load + other.load)  # fmt: skip


async def run_repeated(
    setups: Sequence[Setup], repeat: int, run: Callable[[Setup], Awaitable[Outcome]]
) -> list[Outcome]:
    """Each configuration `repeat` times, alternated (a shared machine's load drifts: every
    configuration sees the same drift), pooled per configuration."""
    pooled: dict[str, Outcome] = {}
    for _ in range(repeat):
        for setup in setups:
            load = os.getloadavg()[0]
            outcome = await run(setup)
            outcome.load = [load, os.getloadavg()[0]]
            previous = pooled.get(setup.label)
            pooled[setup.label] = outcome if previous is None else previous.merge(outcome)
    return list(pooled.values())


def engine_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--engine", args.engine, "--load-report-interval", "0.25"]
    if args.engine == "mocker":
        flags += ["--speedup-ratio", f"{args.speedup_ratio:g}"]
    return flags


def start_cluster(
    setup: Setup, workers: int, pools: Pools, args: argparse.Namespace
) -> tuple[MockerCluster, list[int]]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"kvbm-{setup.label.replace('+', '-')}-"))
    ports = [free_port() for _ in range(workers)]
    worker_args = [*engine_flags(args), *tier_flags(setup, pools, run_dir / "nvme", args)]
    per_worker = [["--metrics-port", str(p)] for p in ports]
    if setup.disk:  # one directory per worker: a disk tier is one worker's
        per_worker = [[*a, "--kvbm-nvme-path", str(run_dir / f"nvme{i}")] for i, a in
                      enumerate(per_worker)]  # fmt: skip
    cluster = MockerCluster(workers, "kv", run_dir, worker_args, per_worker_args=per_worker)
    return cluster, ports


async def run_setup(
    setup: Setup, wl: Workload, pools: Pools, words: Words, args: argparse.Namespace
) -> Outcome:
    cluster, ports = start_cluster(setup, args.workers, pools, args)
    try:
        result = ReplayResult(setup.label)
        await drive(cluster.url, cluster.model(), wl, words, result)
        return Outcome(setup, result, scrape(ports))
    finally:
        cluster.stop()


async def run_probe(setup: Setup, words: Words, args: argparse.Namespace) -> Outcome:
    """TTFT of a returning conversation after two others pushed it out of the device pool."""
    n = args.probe_tokens
    conversation = -(-(n + 64) // args.block_size)
    pools = Pools(args.block_size, device=conversation * 3 // 2, host=conversation * 8, disk=0)
    cluster, ports = start_cluster(setup, 1, pools, args)
    outcome = Outcome(setup, ReplayResult(setup.label))
    rng = random.Random(args.seed)
    try:
        model = cluster.model()
        endpoint = f"{cluster.url}/v1/completions"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def send(prompt: str, max_tokens: int, key: str = "") -> str:
                result, answer = ReplayResult(key), []
                await one_request(session, endpoint, completion_body(model, prompt, max_tokens),
                                  result, answer)  # fmt: skip
                if result.num_errors or not result.ttft:
                    raise SystemExit(f"probe request failed: {dict(result.errors)}")
                if key:
                    outcome.probe.setdefault(key, []).extend(result.ttft)
                    outcome.probe_cached.setdefault(key, []).append(result.cached_tokens)
                return "".join(answer)

            await send(words.text(rng, 64), 2)  # warm-up: first-request costs out of the way
            for _ in range(args.probe_trials):
                history = words.text(rng, n)
                history += await send(history, 4, "first visit (cold)")
                for _ in range(2):
                    await send(words.text(rng, n), 4)
                history += "\nUser:" + words.text(rng, 16) + "\nAssistant:"
                history += await send(history, 4, "return (evicted)")
                history += "\nUser:" + words.text(rng, 16) + "\nAssistant:"
                await send(history, 4, "return again (device hit)")
        outcome.metrics = scrape(ports)
        return outcome
    finally:
        cluster.stop()


# -- report -------------------------------------------------------------------------


def ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}x" if den and num == num and den == den else "n/a"


def format_rows(outcomes: Sequence[Outcome]) -> str:
    """One row per configuration, the tier hit rates and the ratios to `off`."""
    base = next((o.result for o in outcomes if o.setup.label == "off"), None)
    width = max([10, *(len(o.setup.label) for o in outcomes)])
    header = (
        f"{'config':<{width}} {'ok':>5} {'err':>4} {'req/s':>6} {'out tok/s':>9} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'cached':>7} "
        f"{'hit hbm':>8} {'host':>6} {'disk':>6} {'p50 off/x':>9} {'p99 off/x':>9} "
        f"{'tok/s x/off':>11} {'load':>5}"
    )
    lines = [header, "-" * len(header)]
    for o in outcomes:
        r, wall = o.result, max(o.result.wall, 1e-9)
        hits = tier_hits(o.setup, o.metrics)
        tiers = " ".join(
            f"{hits[t]:>{w}.1%}" if t in hits else f"{'-':>{w}}"
            for t, w in zip(TIERS, (8, 6, 6), strict=True)
        )
        p50, p99 = percentile(r.ttft, 0.5), percentile(r.ttft, 0.99)
        tput = r.output_tokens / wall
        vs = "-" * 9 + " " + "-" * 9 + " " + "-" * 11
        if base is not None and base is not r:
            bwall = max(base.wall, 1e-9)
            vs = (
                f"{ratio(percentile(base.ttft, 0.5), p50):>9} "
                f"{ratio(percentile(base.ttft, 0.99), p99):>9} "
                f"{ratio(tput, base.output_tokens / bwall):>11}"
            )
        lines.append(
            f"{o.setup.label:<{width}} {r.ok:>5} {r.num_errors:>4} {r.ok / wall:>6.2f} "
            f"{tput:>9.0f} {p50 * 1e3:>7.0f}ms {p99 * 1e3:>7.0f}ms "
            f"{percentile(r.itl, 0.5) * 1e3:>6.1f}ms {r.cached_fraction:>7.1%} {tiers} {vs} "
            f"{sum(o.load) / max(len(o.load), 1):>5.1f}"
        )
    for o in outcomes:
        for reason, count in sorted(o.result.errors.items()):
            lines.append(f"  {o.setup.label} errors: {count} x {reason}")
    return "\n".join(lines)


def metrics_line(o: Outcome) -> str:
    """What one configuration's workers ended with: preemptions, tier use (mean over the
    workers), blocks written down and brought back per tier, mean copy latency per kind."""
    m = o.metrics

    def get(name: str, key: str = "") -> float:
        return m.get((f"tandem_kvbm_{name}", key), 0.0)

    parts = [f"preemptions {m.get(('tandem_worker_preemptions_total', ''), 0.0):g}"]
    tiers = [t for t in TIERS if ("tandem_kvbm_memory_utilization_percent", t) in m]
    if tiers:
        used = [f"{t} {get('memory_utilization_percent', t) / o.runs:.0f}%" for t in tiers]
        parts.append("used " + " ".join(used))
        for what in ("offloaded", "onboarded"):
            counts = [f"{t} {get(f'{what}_blocks_total', t):g}" for t in tiers[1:]]
            parts.append(f"{what} blocks " + " ".join(counts))
        kinds = sorted(k for (name, k) in m if name == "tandem_kvbm_copies_total")
        copies = [
            f"{k} {get('copy_seconds_total', k) / n * 1e3:.1f}ms"
            for k in kinds
            if (n := get("copies_total", k))
        ]
        parts.append("mean copy " + (" ".join(copies) or "-"))
        declined = [f"{t} {get('declined_onboard_blocks_total', t):g}" for t in tiers[1:]]
        parts.append("declined blocks " + " ".join(declined))
        parts.append(f"skipped {get('offloads_skipped_total'):g}")
        parts.append(f"failed reads {get('failed_reads_total'):g}")
    return f"  {o.setup.label}: " + "; ".join(parts)


def format_metrics(outcomes: Sequence[Outcome]) -> str:
    return "\n".join(metrics_line(o) for o in outcomes)


def format_probe(outcomes: Sequence[Outcome]) -> str:
    lines = [
        f"{'config':<10} {'visit':<28} {'TTFT p50':>9} {'min':>7} {'cached tokens':>14} {'load':>5}"
    ]
    for o in outcomes:
        for key, ttft in o.probe.items():
            cached = sorted(o.probe_cached[key])
            lines.append(
                f"{o.setup.label:<10} {key:<28} {percentile(ttft, 0.5) * 1e3:>7.0f}ms "
                f"{min(ttft) * 1e3:>5.0f}ms {cached[len(cached) // 2]:>14} "
                f"{sum(o.load) / max(len(o.load), 1):>5.1f}"
            )
    by = {o.setup.label: o.probe.get("return (evicted)", []) for o in outcomes}
    if by.get("off") and len(by) > 1:
        for label, ttft in by.items():
            if label != "off" and ttft:
                speedup = percentile(by["off"], 0.5) / percentile(ttft, 0.5)
                lines.append(
                    f"returning {label} vs off (recomputed): {speedup:.1f}x faster to the "
                    f"first token (target >= 5x: {'met' if speedup >= 5 else 'MISSED'})"
                )
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", default="mocker", choices=("mocker", "torch"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--configs", default="off,host,host+disk", help="comma-separated")
    parser.add_argument("--users", type=int, default=DEFAULTS.users)
    parser.add_argument("--rounds", type=int, default=DEFAULTS.rounds)
    parser.add_argument("--doc-tokens", type=int, default=DEFAULTS.doc_tokens)
    parser.add_argument("--turn-tokens", type=int, default=DEFAULTS.turn_tokens)
    parser.add_argument("--output-tokens", type=int, default=DEFAULTS.output_tokens)
    parser.add_argument("--concurrency", type=int, default=DEFAULTS.concurrency)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument(
        "--device-fraction", type=float, default=0.25, help="device pools / working set"
    )
    parser.add_argument("--host-fraction", type=float, default=0.5, help="host tiers / working set")
    parser.add_argument("--disk-fraction", type=float, default=2.0, help="disk tiers / working set")
    parser.add_argument("--speedup-ratio", type=float, default=1.0, help="mocker time scale")
    parser.add_argument(
        "--host-bandwidth", type=float, default=0.0, help="mocker host link GB/s (0: default)"
    )
    parser.add_argument(
        "--disk-bandwidth", type=float, default=0.0, help="mocker disk link GB/s (0: default)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the configurations N times, alternated"
    )
    parser.add_argument("--probe", action="store_true", help="the returning-conversation probe")
    parser.add_argument("--probe-tokens", type=int, default=2000)
    parser.add_argument("--probe-trials", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        args.setups = [parse_setup(s) for s in args.configs.split(",") if s]
    except ValueError as exc:
        parser.error(str(exc))
    return args


async def main_async(args: argparse.Namespace) -> None:
    words = Words()
    if args.probe:
        # A disk tier would sit under a host tier that holds every probe conversation.
        setups = [s for s in args.setups if not s.disk]
        outcomes = await run_repeated(setups, args.repeat, lambda s: run_probe(s, words, args))
        print(f"\nprobe: {args.engine} engine, a returning {args.probe_tokens}-token conversation")
        print(format_probe(outcomes))
        print(format_metrics(outcomes))
        return
    wl = Workload(
        args.users, args.rounds, args.doc_tokens, args.turn_tokens, args.output_tokens,
        args.concurrency, args.seed,
    )  # fmt: skip
    pools = size_pools(wl, args.workers, args)
    outcomes = await run_repeated(
        args.setups, args.repeat, lambda s: run_setup(s, wl, pools, words, args)
    )
    working_set = wl.users * wl.context_tokens
    tokens = lambda blocks: args.workers * blocks * args.block_size / working_set  # noqa: E731
    print(
        f"\nkvbm: {args.workers} {args.engine} workers"
        f"{f' (speedup {args.speedup_ratio:g})' if args.engine == 'mocker' else ''}, "
        f"{wl.users} users x {wl.rounds} rounds, {wl.doc_tokens}-token documents, "
        f"{wl.turn_tokens}-token turns, {wl.output_tokens}-token answers, "
        f"{wl.concurrency} streams; working set ~{working_set:,} tokens; per worker "
        f"{pools.device} device blocks ({tokens(pools.device):.2f}x), host {pools.host} "
        f"({tokens(pools.host):.2f}x), disk {pools.disk} ({tokens(pools.disk):.2f}x) of "
        f"{args.block_size} tokens"
    )
    print(format_rows(outcomes))
    print(format_metrics(outcomes))


def main(argv: Sequence[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
