"""Trace replay: send a Mooncake-format trace to an OpenAI endpoint, open loop, and print a table.

Each trace record becomes one streaming POST /v1/completions whose `prompt` is
token ids (equal `hash_ids` give equal tokens, so shared prefixes really
repeat; see tandem.launcher.mooncake_trace), with `max_tokens` = its output length and
`ignore_eos`. Requests go out at their trace timestamps divided by `--speedup`,
whether or not earlier ones have finished (open loop); `--max-concurrency`
only guards the machine, and a request it holds back shows in `late p99`
(how far behind its scheduled time a request was sent).

  python bench/trace_replay.py --url http://127.0.0.1:8000 --trace T.jsonl --speedup 4
  python bench/trace_replay.py --local-mocker 8 --router-mode kv round-robin \\
      --trace ../shared/traces/synthetic_trace.jsonl --max-requests 600 --speedup 4

`--local-mocker N` starts nats + etcd, N mocker workers and a frontend per
router mode (fresh caches for each), replays, and prints one row per mode;
flags this tool does not know (`--speedup-ratio`, `--num-kv-blocks`,
`--kv-cache-block-size`, ...) go to every worker, and `--context-length`
defaults to 131072 there, enough for the long prompts of Mooncake traces.

The table is the one `tandem simulate` prints (tandem.launcher.trace_summary):
TTFT (send to first token), ITL (gap between reads that carry tokens, spread
over the tokens in the read), output tok/s and req/s over the wall time (first
send to last answer), `cached` = sum of usage.prompt_tokens_details.cached_tokens
/ sum of usage.prompt_tokens, and errors by HTTP status and error code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from mocker_cluster import MockerCluster  # bench/ is on sys.path when run as a script
from tandem.launcher.mooncake_trace import (
    DEFAULT_BLOCK_TOKENS,
    TraceRecord,
    prompt_token_ids,
    read_trace,
)
from tandem.launcher.trace_summary import ReplayResult, format_table

DEFAULT_VOCAB_SIZE = 49152  # the mocker's default (tandem.runtime.model_card)
LOCAL_CONTEXT_LENGTH = 131072


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """How to turn records into requests and how long to replay."""

    speedup: float = 1.0
    """Trace time is divided by this (4 = four times as fast as recorded)."""
    duration: float = float("inf")
    """Send only records scheduled within this many seconds (after scaling)."""
    max_concurrency: int = 512
    """Most requests in flight; beyond it sends wait (and show as late)."""
    drain_timeout: float = 300.0
    """After the last send, wait at most this long for answers; the rest count as errors."""
    block_tokens: int = DEFAULT_BLOCK_TOKENS
    vocab_size: int = DEFAULT_VOCAB_SIZE
    seed: int = 0


def _error_code(body: bytes) -> str:
    try:
        error = json.loads(body)["error"]
        return str(error.get("code") or error.get("type") or "error")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "unparsed"


async def one_request(
    session: aiohttp.ClientSession,
    endpoint: str,
    body: bytes,
    result: ReplayResult,
    texts: list[str] | None = None,
) -> None:
    """Send one streaming completion; add its timings, usage or error to `result`.

    With `texts`, the generated text pieces are appended to it (a multi-turn client
    sends the answer back in its next prompt)."""
    start = time.perf_counter()
    first = last = 0.0
    usage = None
    try:
        async with session.post(
            endpoint, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            if resp.status != 200:
                result.errors[f"HTTP {resp.status} {_error_code(await resp.read())}"] += 1
                return
            pending = b""
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                *events, pending = (pending + chunk).split(b"\n\n")
                tokens = 0
                for event in events:
                    data = event.removeprefix(b"data: ")
                    if data.startswith(b'{"error"'):
                        result.errors[f"stream {_error_code(data)}"] += 1
                        return
                    if b'"usage":{' in data:
                        usage = json.loads(data)["usage"]
                    elif b'"text":"' in data and b'"text":""' not in data:
                        tokens += 1
                        if texts is not None:
                            texts.append(json.loads(data)["choices"][0]["text"])
                if not tokens:
                    continue
                if not first:
                    first = last = now
                    tokens -= 1
                if tokens:
                    result.itl.extend([(now - last) / tokens] * tokens)
                last = now
    except (TimeoutError, aiohttp.ClientError) as exc:
        result.errors[f"client {type(exc).__name__}"] += 1
        return
    if usage is None:
        result.errors["stream without usage"] += 1
        return
    result.ok += 1
    result.output_tokens += int(usage["completion_tokens"])
    result.prompt_tokens += int(usage["prompt_tokens"])
    details = usage.get("prompt_tokens_details") or {}
    result.cached_tokens += int(details.get("cached_tokens") or 0)
    if first:
        result.ttft.append(first - start)


def request_body(record: TraceRecord, model: str, config: ReplayConfig) -> bytes:
    prompt = prompt_token_ids(record, config.block_tokens, config.vocab_size, config.seed)
    return json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": record.output_length,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        separators=(",", ":"),
    ).encode()


async def replay(
    url: str, model: str, records: Sequence[TraceRecord], config: ReplayConfig, label: str = ""
) -> ReplayResult:
    """Send `records` at their scaled timestamps (open loop) and wait for the answers."""
    result = ReplayResult(label or url)
    if not records:
        return result
    endpoint = f"{url.rstrip('/')}/v1/completions"
    guard = asyncio.Semaphore(config.max_concurrency)
    tasks: set[asyncio.Task[None]] = set()
    finished_at = 0.0

    async def send(record: TraceRecord) -> None:
        nonlocal finished_at
        try:
            await one_request(session, endpoint, request_body(record, model, config), result)
        finally:
            guard.release()
            finished_at = time.perf_counter()

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        origin = records[0].arrival_s
        start = time.perf_counter()
        for record in records:
            offset = (record.arrival_s - origin) / config.speedup
            if offset > config.duration:
                break
            target = start + offset
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await guard.acquire()
            result.late.append(max(0.0, time.perf_counter() - target))
            result.sent += 1
            tasks.add(asyncio.create_task(send(record)))
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=config.drain_timeout)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            if unfinished:
                result.errors["unfinished at drain timeout"] += len(unfinished)
        result.wall = (finished_at or time.perf_counter()) - start
    return result


def models_of(url: str) -> str:
    with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models", timeout=10) as resp:
        return str(json.load(resp)["data"][0]["id"])


def local_worker_args(extra: list[str]) -> list[str]:
    """The flags each local mocker worker gets: the pass-through ones, with a long context."""
    if not any(a == "--context-length" or a.startswith("--context-length=") for a in extra):
        extra = ["--context-length", str(LOCAL_CONTEXT_LENGTH), *extra]
    return extra


async def run(args: argparse.Namespace, worker_args: list[str]) -> list[ReplayResult]:
    records = list(read_trace(args.trace, args.max_requests))
    config = ReplayConfig(
        speedup=args.speedup,
        duration=args.duration,
        max_concurrency=args.max_concurrency,
        drain_timeout=args.drain_timeout,
        block_tokens=args.block_tokens,
        vocab_size=args.vocab_size,
        seed=args.seed,
    )
    if not args.local_mocker:
        model = args.model or models_of(args.url)  # noqa: ASYNC210 - once, before any load
        return [await replay(args.url, model, records, config)]
    results = []
    for mode in args.router_mode:
        log_dir = Path(tempfile.mkdtemp(prefix=f"tandem-replay-{mode}-"))
        cluster = MockerCluster(args.local_mocker, mode, log_dir, worker_args)
        try:
            results.append(await replay(cluster.url, cluster.model(), records, config, mode))
        finally:
            cluster.stop()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trace", required=True, help="Mooncake-format JSONL trace")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="an OpenAI endpoint, e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--local-mocker", type=int, metavar="N", help="start N mocker workers and a frontend"
    )
    parser.add_argument("--model", default="", help="model name (default: the first served)")
    parser.add_argument(
        "--router-mode",
        nargs="+",
        default=["kv"],
        choices=("kv", "round-robin", "random"),
        help="with --local-mocker: one cluster and one row per mode",
    )
    parser.add_argument("--speedup", type=float, default=1.0, help="divide trace time by this")
    parser.add_argument("--max-requests", type=int, default=None, help="first N records only")
    parser.add_argument(
        "--duration", type=float, default=float("inf"), help="send for at most S seconds"
    )
    parser.add_argument("--max-concurrency", type=int, default=512, help="most in flight")
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="wait for answers after the last send"
    )
    parser.add_argument("--block-tokens", type=int, default=DEFAULT_BLOCK_TOKENS)
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--seed", type=int, default=0, help="seed of the block contents")
    args, extra = parser.parse_known_args(argv)
    if extra and not args.local_mocker:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.speedup <= 0 or args.max_concurrency <= 0:
        parser.error("--speedup and --max-concurrency must be positive")
    worker_args = local_worker_args(extra) if args.local_mocker else []
    try:
        import uvloop
    except ImportError:
        results = asyncio.run(run(args, worker_args))
    else:
        results = uvloop.run(run(args, worker_args))
    where = (
        f"{args.local_mocker} mocker workers ({' '.join(worker_args)})"
        if args.local_mocker
        else args.url
    )
    print(
        f"\ntrace replay: {Path(args.trace).name}, {results[0].sent} requests sent, "
        f"speedup {args.speedup:g}, {where}"
    )
    print(format_table(results))


if __name__ == "__main__":
    main()
