"""SLA planner vs fixed fleets: a ramp/burst/lull rate trace replayed against mocker workers.

The trace (generated, seeded) has a lull, a ramp, a plateau, a burst and a
lull again; every request is a streaming completion with its own prompt (no
prefix sharing) of --input-tokens, generating --output-tokens. It is
replayed open loop, at a fixed time scale, against:

- `tandem up --planner --planner-mode sla` starting from one worker, with the
  profile `tandem profile` measures first on a worker with the same flags;
- `tandem up --workers N` for N from --max-workers down, until a fleet no
  longer meets the targets: the smallest one that does is the best fixed fleet.

A request attains the SLA when its TTFT (send to first token) is within
--ttft-target-ms and its mean ITL (gaps between token reads, spread over the
tokens read) within --itl-target-ms. Worker-seconds: the planner's fleet is
sampled from etcd every 0.5 s (registered workers, draining ones included:
they still hold a machine); a fixed fleet is N x the replay's wall time.

  .venv/bin/python bench/planner.py                   # defaults below, ~12 min
  .venv/bin/python bench/planner.py --duration-scale 0.5 --max-workers 4

Flags it does not know go to every worker (mocker flags); the default mocker
decodes slower with the batch than the stock one (see MOCKER), so that the
rates one small machine can send need several workers.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from tandem.launcher.local_infra import LocalInfra, free_port
from tandem.launcher.mooncake_trace import DEFAULT_BLOCK_TOKENS, TraceRecord
from tandem.launcher.trace_summary import ReplayResult
from tandem.runtime.discovery import Discovery
from trace_replay import ReplayConfig, one_request, request_body  # bench/ is on sys.path

MOCKER = ["--decode-step-seconds", "0.01", "--decode-seq-seconds", "0.002"]
# (seconds, requests/s at the start, requests/s at the end): linear in between.
PHASES = ((40, 1.5, 1.5), (40, 1.5, 14.0), (40, 14.0, 14.0), (15, 22.0, 22.0), (60, 1.5, 1.5))


def rate_trace(scale: float, input_tokens: int, output_tokens: int, seed: int) -> list[TraceRecord]:
    """Poisson arrivals whose rate follows PHASES (durations times `scale`)."""
    rng = random.Random(seed)
    records: list[TraceRecord] = []
    start = 0.0
    blocks = -(-input_tokens // DEFAULT_BLOCK_TOKENS)
    for seconds, r0, r1 in PHASES:
        span = seconds * scale
        t = 0.0
        while True:
            rate = r0 + (r1 - r0) * t / span
            t += rng.expovariate(max(rate, 1e-3))
            if t >= span:
                break
            first = len(records) * blocks  # every prompt its own blocks: no prefix hits
            records.append(TraceRecord((start + t) * 1000, input_tokens, output_tokens,
                                       tuple(range(first, first + blocks))))  # fmt: skip
        start += span
    return records


@dataclass
class Outcome:
    label: str
    sent: int = 0
    attained: int = 0
    errors: int = 0
    error_kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)  # mean per request
    worker_seconds: float = 0.0
    wall: float = 0.0
    max_workers: int = 0

    @property
    def attainment(self) -> float:
        return self.attained / self.sent if self.sent else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def replay(url: str, model: str, records: Sequence[TraceRecord], args: argparse.Namespace,
                 outcome: Outcome) -> None:  # fmt: skip
    config = ReplayConfig()
    endpoint = f"{url}/v1/completions"

    async def send(record: TraceRecord) -> None:
        one = ReplayResult("")
        await one_request(session, endpoint, request_body(record, model, config), one)
        if one.ok != 1 or not one.ttft:
            outcome.errors += 1
            outcome.error_kinds.update(one.errors or {"no token": 1})
            return
        ttft, itl = one.ttft[0], (sum(one.itl) / len(one.itl) if one.itl else 0.0)
        outcome.ttft.append(ttft)
        outcome.itl.append(itl)
        if ttft * 1000 <= args.ttft_target_ms and itl * 1000 <= args.itl_target_ms:
            outcome.attained += 1

    tasks = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        for record in records:
            delay = start + record.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            outcome.sent += 1
            tasks.append(asyncio.create_task(send(record)))
        await asyncio.gather(*tasks)
        outcome.wall = time.perf_counter() - start


class Cluster:
    """`tandem up` on its own nats + etcd; counts its registered workers over time."""

    def __init__(
        self, up_args: list[str], worker_args: list[str], log_dir: Path, env: dict[str, str]
    ) -> None:
        self.infra = LocalInfra.start(log_dir / "infra")
        self.port = free_port()
        self.log_path = log_dir / "up.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tandem.launcher.cli", "up", "--engine", "mocker",
             "--http-host", "127.0.0.1", "--http-port", str(self.port), "--grpc-port", "0",
             "--nats", self.infra.nats_url, "--etcd", self.infra.etcd_url,
             "--log-level", "INFO", *up_args, *worker_args],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )  # fmt: skip
        self.samples: list[tuple[float, int]] = []

    async def wait_serving(self, workers: int) -> str:
        self.discovery = Discovery(self.infra.etcd_url, "default")
        await self.discovery.start()
        self.workers = await self.discovery.instance_set("worker", log_changes=False).start()
        async with asyncio.timeout(180):
            while len(self.workers) < workers:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.log_path.read_text()[-3000:])
                await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # the frontend sees them too (it watches the same keys)
        return next(iter(self.workers)).model

    async def sample_forever(self) -> None:
        while True:
            self.samples.append((time.perf_counter(), len(self.workers)))
            await asyncio.sleep(0.5)

    def worker_seconds(self, start: float, end: float) -> tuple[float, int]:
        inside = [(t, n) for t, n in self.samples if start <= t <= end]
        total = sum(n * 0.5 for _, n in inside)
        return total, max((n for _, n in inside), default=0)

    async def stop(self) -> None:
        await self.discovery.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()
        self.infra.stop()


async def run_one(label: str, up_args: list[str], workers: int, records: list[TraceRecord],
                  args: argparse.Namespace, worker_args: list[str]) -> Outcome:  # fmt: skip
    log_dir = Path(tempfile.mkdtemp(prefix=f"tandem-bench-planner-{label.replace(' ', '-')}-"))
    # The planner child reads its other settings from TANDEM_* (tandem up passes them on).
    env = {"TANDEM_SCALE_DOWN_INTERVALS": str(args.scale_down_intervals)}
    cluster = Cluster(up_args, worker_args, log_dir, env)
    outcome = Outcome(label)
    try:
        model = await cluster.wait_serving(workers)
        sampler = asyncio.create_task(cluster.sample_forever())
        start = time.perf_counter()
        await replay(f"http://127.0.0.1:{cluster.port}", model, records, args, outcome)
        sampler.cancel()
        outcome.worker_seconds, outcome.max_workers = cluster.worker_seconds(
            start, start + outcome.wall
        )
    finally:
        await cluster.stop()
    print(f"  {label}: attainment {outcome.attainment:.1%}, {outcome.worker_seconds:.0f} "
          f"worker-s, errors {dict(outcome.error_kinds)} (logs {log_dir})", flush=True)  # fmt: skip
    return outcome


def table(rows: list[Outcome]) -> str:
    head = f"{'fleet':<16}{'requests':>9}{'attain':>8}{'errors':>7}{'TTFT p50':>10}{'TTFT p95':>10}" \
           f"{'ITL p50':>9}{'ITL p95':>9}{'max wkrs':>9}{'worker-s':>9}"  # fmt: skip
    lines = [head]
    for r in rows:
        lines.append(
            f"{r.label:<16}{r.sent:>9}{r.attainment:>8.1%}{r.errors:>7}"
            f"{_pct(r.ttft, 0.5) * 1000:>8.0f}ms{_pct(r.ttft, 0.95) * 1000:>8.0f}ms"
            f"{_pct(r.itl, 0.5) * 1000:>7.1f}ms{_pct(r.itl, 0.95) * 1000:>7.1f}ms"
            f"{r.max_workers:>9}{r.worker_seconds:>9.0f}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, worker_args: list[str]) -> None:
    records = rate_trace(args.duration_scale, args.input_tokens, args.output_tokens, args.seed)
    span = records[-1].arrival_s if records else 0.0
    print(f"trace: {len(records)} requests over {span:.0f} s, {args.input_tokens} prompt + "
          f"{args.output_tokens} output tokens; targets TTFT {args.ttft_target_ms:.0f} ms, "
          f"ITL {args.itl_target_ms:.0f} ms; worker flags {' '.join(worker_args)}", flush=True)  # fmt: skip
    profile = Path(tempfile.mkdtemp(prefix="tandem-bench-profile-")) / "profile.json"
    subprocess.run(
        [sys.executable, "-m", "tandem.launcher.cli", "profile", "--output", str(profile),
         "--log-level", "WARNING", "--input-lengths", "128,512,2048", "--concurrency", "1,4,8",
         "--context-lengths", "256,1024", "--batch-sizes", "1,4,8,16,32",
         "--decode-tokens", "16", *worker_args],
        check=True, timeout=600,
    )  # fmt: skip
    rows = []
    planner_target = args.planner_itl_target_ms or args.itl_target_ms
    sla_args = ["--workers", "1", "--planner", "--max-workers", str(args.max_workers),
                "--planner-mode", "sla", "--planner-profile", str(profile),
                "--planner-ttft-target-ms", str(args.ttft_target_ms),
                "--planner-itl-target-ms", str(planner_target),
                "--planner-adjustment-interval", str(args.interval),
                "--planner-predictor", args.predictor,
                "--planner-predict-ahead", str(args.predict_ahead),
                "--warm-start" if args.warm_start else "--no-warm-start"]  # fmt: skip
    rows.append(await run_one("sla planner", sla_args, 1, records, args, worker_args))
    best: Outcome | None = None
    for n in range(args.max_workers, 0 if not args.sla_only else args.max_workers, -1):
        fixed = ["--workers", str(n), "--workers-per-process", "1"]
        outcome = await run_one(f"fixed {n}", fixed, n, records, args, worker_args)
        rows.append(outcome)
        if outcome.attainment < args.attainment:
            break
        best = outcome
    print()
    print(table(rows))
    sla = rows[0]
    if args.sla_only:
        return
    if best is None:
        print(f"\nno fixed fleet up to {args.max_workers} workers attains {args.attainment:.0%}")
    else:
        print(f"\nbest fixed fleet meeting {args.attainment:.0%}: {best.label} "
              f"({best.worker_seconds:.0f} worker-s); sla planner: {sla.attainment:.1%} at "
              f"{sla.worker_seconds / best.worker_seconds:.0%} of its worker-seconds")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ttft-target-ms", type=float, default=1000.0)
    parser.add_argument("--itl-target-ms", type=float, default=30.0)
    parser.add_argument("--planner-itl-target-ms", type=float, default=0.0,
                        help="the planner's ITL target (0 = --itl-target-ms)")  # fmt: skip
    parser.add_argument("--attainment", type=float, default=0.95, help="what 'meets' means")
    parser.add_argument("--max-workers", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="planner adjustment interval")
    parser.add_argument("--predictor", default="holt-winters")
    parser.add_argument("--predict-ahead", type=int, default=1, help="planner intervals ahead")
    parser.add_argument("--scale-down-intervals", type=int, default=3,
                        help="the planner's intervals of lower need before it shrinks")  # fmt: skip
    parser.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                        help="the planner's new workers start from a spare interpreter "
                        "(`tandem up --warm-start`)")  # fmt: skip
    parser.add_argument("--sla-only", action="store_true", help="skip the fixed fleets")
    parser.add_argument("--duration-scale", type=float, default=1.0, help="phase lengths x this")
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args, worker_args = parser.parse_known_args(argv)
    asyncio.run(main_async(args, worker_args or MOCKER))


if __name__ == "__main__":
    main()
