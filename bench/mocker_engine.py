"""How cheap is the mocker? Python overhead per step and per token, with simulated time removed.

python bench/mocker_engine.py [--requests 256] [--tokens 200] [--prompt 576]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from tandem.worker.engine import EngineRequest, SamplingConfig
from tandem.worker.kv_publisher import KvEventPublisher
from tandem.worker.mocker import MockerConfig, MockerEngine


async def run(num_requests: int, max_tokens: int, prompt_len: int) -> None:
    publisher = KvEventPublisher("bench")
    engine = MockerEngine(MockerConfig(speedup_ratio=1e9), publisher)
    await engine.start()

    async def one(i: int) -> int:
        prompt = [i % 50 + 1] * (prompt_len - 64) + list(range(i, i + 64))
        request = EngineRequest(f"r{i}", prompt, SamplingConfig(max_tokens=max_tokens))
        return sum([len(out.token_ids) async for out in engine.generate(request)])

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(num_requests))))
    elapsed = time.perf_counter() - start
    await engine.stop()
    print(
        f"{num_requests} requests x {max_tokens} tokens: {elapsed:.3f} s, "
        f"{tokens / elapsed:,.0f} tokens/s, {elapsed / tokens * 1e6:.1f} us per token, "
        f"~{elapsed / max_tokens * 1e3:.2f} ms per full-batch step, "
        f"{publisher.next_event_id} KV events"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--prompt", type=int, default=576)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.tokens, args.prompt))


if __name__ == "__main__":
    main()
