"""Benchmark: how a routing policy spreads equal requests, without the frontend (not a test).

The closed loop of `frontend_overhead.py --scenario realistic` (256 streams of short
prompts sharing only their first block, 128 output tokens each) driven straight into 8
in-process mocker engines at real time, spread by the real router of each mode: no
HTTP, gRPC or NATS, so the frontend's CPU (the limit on a 2-core machine) is out of the
figures. The `kv` router gets what it gets in a cluster: each engine's load report
every 50 ms, `prefill_done` at the first token, `free` at the end. Printed per mode:
output tok/s, TTFT p50, and requests per worker (running + waiting, sampled every
0.25 s after the first 2 s).

    python bench/routing_balance.py [--modes kv,round-robin] [--seconds 25]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from frontend_overhead import reference_prompt  # bench/ is on sys.path when run as a script
from router_index import static_workers
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.policy_registry import make_router
from tandem.worker.engine import EngineRequest, SamplingConfig
from tandem.worker.kv_publisher import KvEventPublisher
from tandem.worker.mocker import MockerConfig, MockerEngine

WORKERS, STREAMS, MAX_TOKENS, PROMPT_TOKENS = 8, 256, 128, 26
REPORT_INTERVAL = 0.05


async def run_mode(mode: str, seconds: float) -> str:
    engines = [
        MockerEngine(MockerConfig(speedup_ratio=1.0), KvEventPublisher(f"w{i}"))
        for i in range(WORKERS)
    ]
    for engine in engines:
        await engine.start()
    by_id = {f"w{i}": e for i, e in enumerate(engines)}
    router = make_router(
        RoutingConfig(router_mode=mode),
        static_workers(list(by_id), engines[0].stats().total_blocks),
    )
    kv = router if isinstance(router, KvRouter) else None
    issued = tokens = 0
    ttft: list[float] = []
    samples: list[int] = []
    sampling = SamplingConfig(max_tokens=MAX_TOKENS, ignore_eos=True)
    start = time.perf_counter()
    deadline = start + seconds

    async def user() -> None:
        nonlocal issued, tokens
        while time.perf_counter() < deadline:
            n, rid = issued, f"r{issued}"
            issued += 1
            prompt = reference_prompt(n, PROMPT_TOKENS)
            iid = (await router.route(rid, prompt, max_tokens=MAX_TOKENS)).instance_id
            sent = time.perf_counter()
            async for out in by_id[iid].generate(EngineRequest(rid, prompt, sampling)):
                tokens += len(out.token_ids)
                if sent and out.token_ids:  # the first token
                    ttft.append(time.perf_counter() - sent)
                    sent = 0.0
                    router.prefill_done(rid)
            router.free(rid)

    async def observe() -> None:
        next_report = next_sample = time.perf_counter()
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            if kv is not None and now >= next_report:
                next_report = now + REPORT_INTERVAL
                for iid, engine in by_id.items():
                    s = engine.stats()
                    kv.load.report(iid, s.active_blocks, s.pending_prefill_tokens, s.total_blocks)
            if now >= next_sample:
                next_sample = now + 0.25
                if now - start > 2.0:
                    samples.extend(
                        s.num_running + s.num_waiting for s in (e.stats() for e in engines)
                    )
            await asyncio.sleep(0.01)

    await asyncio.gather(observe(), *(user() for _ in range(STREAMS)))
    wall = time.perf_counter() - start
    for engine in engines:
        await engine.stop()
    return (
        f"{mode:12} {tokens / wall:8.0f} {statistics.median(ttft) * 1e3:9.1f}ms "
        f"{min(samples):>5}..{max(samples):<5} {statistics.pstdev(samples):6.1f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="kv,round-robin")
    parser.add_argument("--seconds", type=float, default=25.0)
    args = parser.parse_args()
    print(f"{'mode':12} {'tok/s':>8} {'TTFT p50':>11} {'per worker':>12} {'stdev':>6}")
    for mode in args.modes.split(","):
        print(await run_mode(mode, args.seconds), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
