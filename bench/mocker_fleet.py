"""A fleet of mocker workers on one machine: `tandem up --engine mocker --workers N`, measured.

Starts `tandem up` (its own nats + etcd, the workers packed into a few
processes, a frontend), waits until the frontend routes to all N workers,
sends streaming chat requests (groups of prompts sharing a long system
prompt, so kv routing can find prefix hits), then prints: time to ready, the
RSS of every process and their sum, requests ok/errors, how many workers
served a request and the prompt tokens they found cached (from each worker's
/metrics).

  python bench/mocker_fleet.py                          # 200 workers, 400 requests
  python bench/mocker_fleet.py --workers 200 --requests 1000 --concurrency 64 -- --workers-per-process 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
from process_stats import process_tree, rss_mib  # bench/ is on sys.path
from tandem.launcher.local_infra import free_port

_READY = re.compile(r"worker ready instance_id=(\S+) endpoint=\S+ metrics=(\S+)")


def label(cmd: str) -> str:
    if "tandem.worker" in cmd:
        match = re.search(r"--num-workers (\d+)", cmd)
        return f"worker process ({match.group(1) if match else 1} workers)"
    for needle, name in (("tandem.frontend", "frontend"), ("nats-server", "nats"),
                         ("etcd", "etcd"), (" up ", "tandem up")):  # fmt: skip
        if needle in cmd:
            return name
    return cmd[:40]


def health(port: int) -> dict[str, int]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return dict(json.load(resp).get("models", {}))
    except (OSError, ValueError):
        return {}


def scrape(metrics: str) -> tuple[float, float]:
    """(requests served, cached prompt tokens) from one worker's /metrics."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    served = sum(
        float(v) for v in re.findall(r"^tandem_worker_requests_total\{[^}]*\} (\S+)", text, re.M)
    )
    cached = re.search(r"^tandem_worker_cached_prompt_tokens_total\{[^}]*\} (\S+)", text, re.M)
    return served, float(cached.group(1)) if cached else 0.0


async def load(port: int, model: str, args: argparse.Namespace) -> tuple[int, int, float]:
    """(ok, errors, seconds): `--requests` streaming chats at `--concurrency`."""
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    counter = iter(range(args.requests))
    ok = errors = 0

    async def user(session: aiohttp.ClientSession) -> None:
        nonlocal ok, errors
        for i in counter:
            system = f"You are assistant number {i % args.prefix_groups}. " + "Be brief. " * 60
            body = {"model": model, "stream": True, "max_tokens": args.tokens, "ignore_eos": True,
                    "messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": f"question {i}"}]}  # fmt: skip
            try:
                async with session.post(url, json=body) as resp:
                    data = await resp.read()
                    good = resp.status == 200 and b"[DONE]" in data
            except aiohttp.ClientError:
                good = False
            ok, errors = ok + good, errors + (not good)

    start = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        await asyncio.gather(*(user(session) for _ in range(args.concurrency)))
    return ok, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    parser.add_argument("--prefix-groups", type=int, default=100, help="distinct system prompts")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("up_args", nargs="*", help="more `tandem up` flags (after --)")
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mocker-fleet-") as tmp:
        log_path = Path(tmp) / "up.log"
        argv = [sys.executable, "-m", "tandem.launcher.cli", "up", "--engine", "mocker",
                "--workers", str(args.workers), "--http-port", str(port), "--http-host", "127.0.0.1",
                *args.up_args]  # fmt: skip
        start = time.perf_counter()
        with open(log_path, "wb") as log:
            up = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        try:
            while sum(health(port).values()) < args.workers:
                if up.poll() is not None or time.perf_counter() - start > args.ready_timeout:
                    raise SystemExit(f"cluster did not come up:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            ready_s = time.perf_counter() - start
            [model] = list(health(port))
            ok, errors, seconds = asyncio.run(load(port, model, args))
            time.sleep(1.0)  # let the frontend settle before reading memory
            tree = [(pid, label(" ".join(argv))) for pid, argv in process_tree(up.pid).items()]
            rss = [(name, pid, rss_mib(pid)) for pid, name in tree]
            workers = dict(_READY.findall(log_path.read_text(errors="replace")))
            stats = [scrape(m) for m in workers.values()]
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(120)

    print(f"tandem up --engine mocker --workers {args.workers} {' '.join(args.up_args)}")
    print(f"time to ready (all {args.workers} workers routable): {ready_s:.1f} s")
    print(f"\n{'process':<34} {'pid':>8} {'RSS MiB':>9}")
    for name, pid, mib in sorted(rss, key=lambda r: r[0]):
        print(f"{name:<34} {pid:>8} {mib:>9.0f}")
    print(f"{'total':<34} {'':>8} {sum(m for _, _, m in rss):>9.0f}")
    served = sum(1 for n, _ in stats if n > 0)
    print(f"\nrequests: {ok} ok, {errors} errors in {seconds:.1f} s ({ok / seconds:.1f} req/s)")
    print(f"workers that served: {served} of {len(stats)}; "
          f"cached prompt tokens (prefix hits): {sum(c for _, c in stats):,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
