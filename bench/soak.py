"""Soak: many concurrent streams for minutes against `tandem up --engine mocker`, hostile
requests mixed in; errors, latency and the memory of every process over time.

    python bench/soak.py [--streams 1000] [--minutes 10] [--workers 4]
                         [--speedup-ratio 0.05] [--max-tokens 32] [--no-api-key]
                         [--num-kv-blocks 16384] [--sample-interval 60]

Starts `tandem up --engine mocker` (nats, etcd, workers, frontend: every
process a real one) with an API key in its environment, as an operator
would (`TANDEM_API_KEY`), and checks that no process has the key on its
command line. Then --streams closed-loop clients each send streaming chat
completions back to back, for --minutes, while one more client sends a
hostile request every --hostile-interval seconds: a huge stop string, a
huge prompt, max_tokens beyond the context, bad JSON, a lone surrogate,
deeply nested JSON, a wrong key.
A hostile request may be served or refused with a 4xx (both expected,
counted apart); a 5xx or a broken connection is an error, as is any
stream that fails or ends without `[DONE]`.

Prints: requests, errors, tokens/s, TTFT and request latency p50/p99, what
each kind of hostile request got, and the resident memory (RSS) of every
process of the cluster at start (after --warmup seconds of load), middle and
end, with the growth from start to end (target: within 10 %), its peak, and
its course every --sample-interval seconds, beside the number of KV events
the NATS stream holds (which nats-server indexes in memory up to the stream's
cap): growth that follows a cache filling to its bound is not a leak.

The step-time model is slowed down (--speedup-ratio < 1) so that the streams
stay open for seconds and the token rate is modest: the point is many open
streams for a long time, not throughput (`bench/frontend_overhead.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats
from process_stats import argv_of, process_tree, rss_mib  # bench/ is on sys.path
from tandem.launcher.local_infra import free_port
from tandem.launcher.trace_summary import percentile as pct
from tandem.runtime import subjects
from tandem.runtime.messaging import KV_STREAM_MAX_MSGS

CHAT_PATH = "/v1/chat/completions"
TOPICS = ["the sea", "mountains", "rivers", "deserts", "forests", "cities", "the moon", "rain"]


def _name(argv: list[str]) -> str:
    if "-m" in argv and argv.index("-m") + 1 < len(argv):
        module = argv[argv.index("-m") + 1]
        return {"tandem.launcher.cli": "tandem up"}.get(module, module.removeprefix("tandem."))
    return os.path.basename(argv[0]) if argv else "?"


def cluster_processes(root: int) -> dict[int, str]:
    """pid -> a readable name, for `root` and every process below it."""
    found: dict[int, str] = {}
    counts: Counter[str] = Counter()
    for pid, argv in process_tree(root).items():  # worker, worker#2, ... in start order
        name = _name(argv)
        counts[name] += 1
        found[pid] = name if counts[name] == 1 else f"{name}#{counts[name]}"
    return found


class UpCluster:
    """`tandem up --engine mocker` as a child process, its API key in its environment."""

    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = f"sk-soak-{secrets.token_hex(16)}" if args.api_key else ""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.key:
            env["TANDEM_API_KEY"] = self.key
        argv = [sys.executable, "-m", "tandem.launcher.cli", "up", "--engine", "mocker",
                "--workers", str(args.workers), "--http-host", "127.0.0.1",
                "--http-port", str(self.port), "--grpc-port", "0", "--log-level", "WARNING",
                "--speedup-ratio", str(args.speedup_ratio),
                "--num-kv-blocks", str(args.num_kv_blocks)]  # fmt: skip
        self.log_path = log_dir / "tandem-up.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def wait_ready(self, timeout: float = 180.0) -> str:
        """The model once the frontend serves it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"tandem up exited; see {self.log_path}")
            request = urllib.request.Request(f"{self.url}/v1/models", headers=self.headers())
            try:
                with urllib.request.urlopen(request, timeout=2) as resp:
                    data = json.load(resp)["data"]
                if data:
                    return str(data[0]["id"])
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"cluster not ready after {timeout}s; see {self.log_path}")

    def nats_url(self) -> str:
        """The NATS server `tandem up` started (from its workers' command lines)."""
        for argv in process_tree(self.proc.pid).values():
            if "--nats" in argv:
                return argv[argv.index("--nats") + 1]
        raise SystemExit("no process of the cluster names its NATS server")

    def key_on_any_argv(self) -> bool:
        return bool(self.key) and any(
            self.key in " ".join(argv_of(pid)) for pid in cluster_processes(self.proc.pid)
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


# -- load --------------------------------------------------------------------------------


@dataclass
class Stats:
    requests: int = 0
    errors: int = 0
    error_kinds: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    hostile: dict[str, Counter[str]] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] += 1


async def one_stream(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes, stats: Stats
) -> None:
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    done = False
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                stats.error(f"HTTP {resp.status}")
                await resp.read()
                return
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                event = json.loads(payload)
                if "error" in event:
                    stats.error(f"stream error: {event['error'].get('code')}")
                    return
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    tokens += 1
                    if not first:
                        first = time.perf_counter()
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        stats.error(type(exc).__name__)
        return
    if not done:
        stats.error("no [DONE]")
        return
    stats.requests += 1
    stats.tokens += tokens
    if first:
        stats.ttft.append(first - start)
    stats.latency.append(time.perf_counter() - start)


def hostile_requests(model: str, good_key: str) -> dict[str, Callable[[], tuple[bytes, str]]]:
    """kind -> a function giving (body, Authorization header) for one hostile request."""

    def chat(**extra: object) -> bytes:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        return json.dumps({**body, **extra}).encode()

    bearer = f"Bearer {good_key}" if good_key else ""
    nested = b"[" * 100_000 + b"]" * 100_000
    kinds: dict[str, Callable[[], tuple[bytes, str]]] = {
        "huge stop string": lambda: (chat(stop=["x" * 200_000]), bearer),
        "huge prompt": lambda: (
            chat(messages=[{"role": "user", "content": "hi " * 300_000}]),
            bearer,
        ),  # fmt: skip
        # Routed, then refused by the worker: prompt + max_tokens exceed the context.
        "over the context": lambda: (chat(max_tokens=1 << 20), bearer),
        "bad JSON": lambda: (b'{"model": "' + model.encode() + b'", "messages": [', bearer),
        "lone surrogate": lambda: (
            b'{"model": "'
            + model.encode()
            + b'", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
            bearer,
        ),  # fmt: skip
        "deep nesting": lambda: (
            b'{"model": "' + model.encode() + b'", "messages": ' + nested + b"}",
            bearer,
        ),
    }
    if good_key:
        kinds["wrong key"] = lambda: (chat(), "Bearer sk-not-the-key")
    return kinds


async def hostile_client(
    session: aiohttp.ClientSession,
    url: str,
    kinds: dict[str, Callable[[], tuple[bytes, str]]],
    interval: float,
    until: float,
    stats: Stats,
) -> None:
    names = list(kinds)
    i = 0
    while time.monotonic() < until:
        name = names[i % len(names)]
        i += 1
        body, authorization = kinds[name]()
        headers = {"Content-Type": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        outcome = stats.hostile.setdefault(name, Counter())
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                outcome[str(resp.status)] += 1
                if resp.status >= 500:
                    stats.error(f"hostile {name}: HTTP {resp.status}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            outcome[type(exc).__name__] += 1
            stats.error(f"hostile {name}: {type(exc).__name__}")
        await asyncio.sleep(interval)


@dataclass
class Sample:
    """The cluster's memory at one moment of the soak."""

    seconds: float
    label: str
    rss: dict[int, float]
    stream_msgs: int


async def kv_stream_msgs(js: nats.js.JetStreamContext) -> int:
    info = await js.stream_info(subjects.kv_stream("default"))
    return int(info.state.messages)


async def soak(args: argparse.Namespace, cluster: UpCluster, model: str) -> None:
    processes = cluster_processes(cluster.proc.pid)
    seconds = args.minutes * 60
    nc = await nats.connect(cluster.nats_url())
    js = nc.jetstream()
    idle = Sample(0.0, "idle", {p: rss_mib(p) for p in processes}, await kv_stream_msgs(js))
    samples = [idle]
    stats = Stats()
    url = cluster.url + CHAT_PATH
    headers = {"Content-Type": "application/json", **cluster.headers()}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    start = time.monotonic()
    until = start + seconds

    async def user(uid: int) -> None:
        rng = random.Random(uid)
        while time.monotonic() < until:
            topic = rng.choice(TOPICS)
            body = json.dumps({
                "model": model,
                "messages": [{"role": "user", "content": f"Tell me about {topic}, {uid}."}],
                "max_tokens": args.max_tokens,
                "stream": True,
                "ignore_eos": True,
            }).encode()  # fmt: skip
            await one_stream(session, url, headers, body, stats)

    async def sampler() -> None:
        marks = {min(args.warmup, seconds / 4): "start", seconds / 2: "middle", seconds - 1: "end"}
        at = args.sample_interval
        while at < seconds - 1:
            marks.setdefault(at, "")
            at += args.sample_interval
        for at, label in sorted(marks.items()):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            rss = {p: rss_mib(p) for p in processes}
            samples.append(Sample(at, label, rss, await kv_stream_msgs(js)))
            if label:
                print(f"[{time.monotonic() - start:6.0f} s] {label}: {stats.requests} requests, "
                      f"{stats.errors} errors", flush=True)  # fmt: skip

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(user(i)) for i in range(args.streams)]
        kinds = hostile_requests(model, cluster.key)
        if args.hostile_kinds:
            kinds = {name: kinds[name] for name in args.hostile_kinds.split(",")}
        if args.hostile_interval > 0:
            tasks.append(
                asyncio.create_task(
                    hostile_client(session, url, kinds, args.hostile_interval, until, stats)
                )
            )
        await sampler()
        await asyncio.gather(*tasks)
    await nc.close()
    wall = time.monotonic() - start
    report(args, stats, wall, processes, samples, cluster.key_on_any_argv())


def report(
    args: argparse.Namespace,
    stats: Stats,
    wall: float,
    processes: dict[int, str],
    samples: list[Sample],
    key_on_argv: bool,
) -> None:
    ms = 1000.0
    print(f"\nsoak: {args.streams} streams, {wall / 60:.1f} min, {args.workers} mocker workers, "
          f"speedup {args.speedup_ratio}, max_tokens {args.max_tokens}, "
          f"API key {'on' if args.api_key else 'off'}")  # fmt: skip
    print(f"requests {stats.requests}  errors {stats.errors}  req/s {stats.requests / wall:.1f}  "
          f"tok/s {stats.tokens / wall:.0f}")  # fmt: skip
    print(f"TTFT p50 {pct(stats.ttft, 0.5) * ms:.0f} ms  p99 {pct(stats.ttft, 0.99) * ms:.0f} ms"
          f"   latency p50 {pct(stats.latency, 0.5) * ms:.0f} ms  "
          f"p99 {pct(stats.latency, 0.99) * ms:.0f} ms")  # fmt: skip
    if stats.error_kinds:
        print("errors by kind: " + ", ".join(f"{k} {n}" for k, n in stats.error_kinds.items()))
    if args.api_key:
        print(f"API key on any process's command line: {'YES' if key_on_argv else 'no'}")
    print("\nhostile request        sent  answers")
    for name, outcome in stats.hostile.items():
        answers = ", ".join(f"{status} x{n}" for status, n in sorted(outcome.items()))
        print(f"{name:<20} {sum(outcome.values()):>6}  {answers}")
    marked = {s.label: s for s in samples if s.label}
    print("\nprocess           RSS MiB: idle   start  middle     end    peak  end/start")
    for pid, name in processes.items():
        row = [
            marked[label].rss.get(pid, float("nan")) for label in ("idle", "start", "middle", "end")
        ]
        peak = max(s.rss.get(pid, float("nan")) for s in samples)
        growth = row[3] / row[1] - 1 if row[1] else float("nan")
        print(f"{name:<20} {row[0]:>10.1f} {row[1]:>7.1f} {row[2]:>7.1f} {row[3]:>7.1f} "
              f"{peak:>7.1f} {growth:>+9.1%}")  # fmt: skip
    print(
        f"\nRSS MiB over time, and the KV events the NATS stream holds (cap {KV_STREAM_MAX_MSGS:,})"
    )
    print(f"{'second':>8} {'stream msgs':>12} " + " ".join(f"{n:>11}" for n in processes.values()))
    for s in samples:
        cells = " ".join(f"{s.rss.get(pid, float('nan')):>11.1f}" for pid in processes)
        print(f"{s.seconds:>8.0f} {s.stream_msgs:>12,} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams (1000)")
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (10)")
    parser.add_argument("--workers", type=int, default=4, help="mocker workers (4)")
    parser.add_argument("--speedup-ratio", type=float, default=0.05,
                        help="mocker step-time divisor (0.05: ~20x slower than the calibration)")  # fmt: skip
    parser.add_argument("--num-kv-blocks", type=int, default=16384,
                        help="KV blocks per mocker worker (16384, the mocker's default)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (32)")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds of load before the 'start' memory sample (30)")  # fmt: skip
    parser.add_argument("--hostile-interval", type=float, default=0.5,
                        help="seconds between two hostile requests (0.5; 0: none)")  # fmt: skip
    parser.add_argument("--hostile-kinds", default="",
                        help="comma-separated kinds of hostile request to send (default: all)")  # fmt: skip
    parser.add_argument("--sample-interval", type=float, default=60.0,
                        help="seconds between two memory samples (60)")  # fmt: skip
    parser.add_argument("--api-key", action=argparse.BooleanOptionalAction, default=True,
                        help="lock the API with a key (and send a wrong one among the hostile)")  # fmt: skip
    args = parser.parse_args()
    cluster = UpCluster(args, Path(tempfile.mkdtemp(prefix="tandem-soak-")))
    try:
        model = cluster.wait_ready()
        asyncio.run(soak(args, cluster, model))
    finally:
        cluster.stop()
        print(f"\nlogs of every process: {cluster.log_path}")


if __name__ == "__main__":
    main()
