"""The KServe gRPC API against the OpenAI HTTP API: what the same work costs the frontend.

Starts nats + etcd, mocker workers and a frontend serving both APIs (each its own
process), then alternates rounds of the same load through each: `--concurrency`
clients, each sending requests one after another for `--requests-per-round` requests
in all, `--max-tokens` tokens each (ignore_eos), unary and streamed. KServe requests go
through `tritonclient.grpc.aio` (ModelInfer; ModelStreamInfer with `stream` true, one
long-lived call per client), OpenAI ones through aiohttp (`/v1/completions`, SSE when
streamed). Prints, per API and mode: requests/s, latency p50/p99 (request sent to last
byte), and the frontend's and this client's CPU per request (from /proc), pooled over
the rounds; the API that goes first alternates every round.

  python bench/kserve_overhead.py                       # speedup 1000: the frontend is the limit
  python bench/kserve_overhead.py --rounds 6 --concurrency 32 --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import tritonclient.grpc.aio as triton
from frontend_overhead import cpu_seconds, self_cpu  # bench/ is on sys.path as a script
from mocker_cluster import MockerCluster
from tandem.launcher.local_infra import free_port
from tandem.launcher.trace_summary import percentile as pct

PROMPT = "Tell me a story about the sea, the wind and a small boat."


@dataclass
class Tally:
    """One (API, mode)'s requests over every round."""

    requests: int = 0
    errors: int = 0
    wall: float = 0.0
    frontend_cpu: float = 0.0
    client_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)


# A client: sends one request, returns once its last byte arrived (raises on failure).
Send = Callable[[], Awaitable[None]]


def kserve_inputs(max_tokens: int, stream: bool) -> list[triton.InferInput]:
    values = [
        ("text_input", "BYTES", np.array([PROMPT.encode()], dtype=np.object_)),
        ("max_tokens", "INT32", np.array([max_tokens], dtype=np.int32)),
        ("ignore_eos", "BOOL", np.array([True])),
        ("stream", "BOOL", np.array([stream])),
    ]
    tensors = []
    for name, datatype, array in values:
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


class KserveStreamUser:
    """One client's long-lived ModelStreamInfer call: a request, then its responses, in turn."""

    def __init__(self, client: triton.InferenceServerClient, model: str, max_tokens: int) -> None:
        self._requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._request = {"model_name": model, "inputs": kserve_inputs(max_tokens, True)}
        self._responses = client.stream_infer(self._feed())

    async def _feed(self) -> AsyncIterator[dict[str, Any]]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def send(self) -> None:
        self._requests.put_nowait(self._request)
        while True:
            result, error = await anext(self._responses)
            if error is not None:
                raise error
            if result.get_response().parameters["triton_final_response"].bool_param:
                return

    async def close(self) -> None:
        self._requests.put_nowait(None)
        async for _ in self._responses:
            pass


async def run_round(users: list[Send], per_round: int) -> tuple[int, int, float, list[float]]:
    """`per_round` requests spread over `users`, each user one at a time."""
    issued = errors = 0
    latencies: list[float] = []

    async def user(send: Send) -> None:
        nonlocal issued, errors
        while issued < per_round:
            issued += 1
            start = time.perf_counter()
            try:
                await send()
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(user(send) for send in users))
    return len(latencies), errors, time.perf_counter() - start, latencies


async def bench(
    args: argparse.Namespace, cluster: MockerCluster, grpc_url: str
) -> dict[str, Tally]:
    model = cluster.model()
    assert cluster.frontend is not None
    frontend = cluster.frontend.pid
    tallies: dict[str, Tally] = {}
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=300)
    )
    client = triton.InferenceServerClient(grpc_url)
    streams = [KserveStreamUser(client, model, args.max_tokens) for _ in range(args.concurrency)]
    unary_inputs = kserve_inputs(args.max_tokens, False)

    def openai(stream: bool) -> Send:
        body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": args.max_tokens,
                           "ignore_eos": True, "stream": stream}).encode()  # fmt: skip

        async def send() -> None:
            async with session.post(
                f"{cluster.url}/v1/completions",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as resp:
                resp.raise_for_status()
                async for _ in resp.content.iter_any():
                    pass

        return send

    async def kserve_unary() -> None:
        await client.infer(model, unary_inputs)

    loads: dict[str, list[Send]] = {
        "openai unary": [openai(False)] * args.concurrency,
        "kserve unary": [kserve_unary] * args.concurrency,
        "openai stream": [openai(True)] * args.concurrency,
        "kserve stream": [s.send for s in streams],
    }
    try:
        for users in loads.values():  # warm every path: connections, worker streams
            await run_round(users, args.concurrency)
        for r in range(args.rounds):
            for mode in ("unary", "stream"):
                order = ("openai", "kserve") if r % 2 == 0 else ("kserve", "openai")
                for api in order:
                    name = f"{api} {mode}"
                    tally = tallies.setdefault(name, Tally())
                    cpu0, client0 = cpu_seconds(frontend), self_cpu()
                    done, errors, wall, latencies = await run_round(
                        loads[name], args.requests_per_round
                    )
                    tally.frontend_cpu += cpu_seconds(frontend) - cpu0
                    tally.client_cpu += self_cpu() - client0
                    tally.requests += done
                    tally.errors += errors
                    tally.wall += wall
                    tally.latencies.extend(latencies)
    finally:
        for s in streams:
            await s.close()
        await client.close()
        await session.close()
    return tallies


def print_table(args: argparse.Namespace, tallies: dict[str, Tally]) -> None:
    print(
        f"\n{args.workers} mocker workers, speedup {args.speedup:g}, concurrency "
        f"{args.concurrency}, {args.max_tokens} tokens a request, {args.rounds} rounds of "
        f"{args.requests_per_round} requests per API and mode (alternated)"
    )
    header = (f"{'api':<15} {'req/s':>8} {'lat p50':>9} {'lat p99':>9} "
              f"{'frontend/req':>13} {'client/req':>11} {'errors':>7}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for name in ("openai unary", "kserve unary", "openai stream", "kserve stream"):
        t = tallies[name]
        n = max(t.requests, 1)
        print(
            f"{name:<15} {t.requests / t.wall:>8.1f} {pct(t.latencies, 0.5) * 1e3:>7.1f}ms "
            f"{pct(t.latencies, 0.99) * 1e3:>7.1f}ms {t.frontend_cpu / n * 1e3:>11.3f}ms "
            f"{t.client_cpu / n * 1e3:>9.3f}ms {t.errors:>7}"
        )
    print(
        "(frontend/req, client/req: CPU seconds of the frontend process / of this client per request)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--speedup", type=float, default=1000.0, help="mocker --speedup-ratio")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests-per-round", type=int, default=400)
    args = parser.parse_args()
    grpc_port = free_port()
    with tempfile.TemporaryDirectory(prefix="kserve-bench-") as logs:
        cluster = MockerCluster(
            args.workers,
            "kv",
            Path(logs),
            worker_args=("--speedup-ratio", str(args.speedup)),
            frontend_args=("--grpc-port", str(grpc_port)),
        )
        try:
            tallies = asyncio.run(bench(args, cluster, f"127.0.0.1:{grpc_port}"))
        finally:
            cluster.stop()
    print_table(args, tallies)


if __name__ == "__main__":
    main()
