"""Sweeps one live worker over gRPC and measures what `WorkerProfile` holds.

Prefill: for each input length and load, that many distinct prompts are sent
at once with `max_tokens` 1; TTFT is each one's time to its first token,
throughput the prompt tokens over the time the last one took. Decode: for
each context length and batch size, that many requests of that prompt length
decode together; only the window in which all of them are decoding counts
(after the last first token, before the first last token), so the figure is
the steady batch's: output tokens per second in the window, and ITL the
batch over that rate. Prompts are random token ids, distinct per request, so
no prefix cache makes a point look faster than a fresh prompt would be.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from tandem.runtime.grpc_util import create_channel
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

from .profile import DecodePoint, PrefillPoint, WorkerProfile

log = logging.getLogger("tandem.profile")
_TOKEN_RANGE = (100, 20_000)  # ids every supported tokenizer has


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """Which points to measure."""

    input_lengths: Sequence[int] = (128, 512, 2048, 8192)
    concurrency: Sequence[int] = (1, 2, 4, 8)
    context_lengths: Sequence[int] = (512, 2048, 8192)
    batch_sizes: Sequence[int] = (1, 4, 16, 64, 128)
    decode_tokens: int = 64
    kv_capacity_tokens: int = 0  # 0 = unknown: every point is tried
    settings: dict[str, object] = field(default_factory=dict)


@dataclass(slots=True)
class _Timing:
    sent: float
    tokens: list[float]  # arrival time of each output token


class Profiler:
    """Owns one gRPC channel to the worker being profiled."""

    def __init__(self, endpoint: str, seed: int = 0) -> None:
        self._channel: grpc.aio.Channel = create_channel(endpoint)
        self._stub = worker_pb2_grpc.WorkerStub(self._channel)
        self._rng = random.Random(seed)

    async def close(self) -> None:
        await self._channel.close()

    async def run(self, plan: SweepPlan, engine: str) -> WorkerProfile:
        health = await self._stub.Health(worker_pb2.HealthRequest(), timeout=10)
        if not health.ready:
            raise RuntimeError("the worker is not ready to serve")
        prefill = [p for isl in plan.input_lengths for p in await self._prefill_row(plan, isl)]
        decode = [d for ctx in plan.context_lengths for d in await self._decode_row(plan, ctx)]
        if not prefill or not decode:
            raise RuntimeError("no point fits the worker's KV cache: lower the lengths swept")
        return WorkerProfile(
            engine=engine,
            model=health.model,
            prefill=tuple(prefill),
            decode=tuple(decode),
            created_at=time.time(),
            settings=dict(plan.settings),
        )

    def _fits(self, plan: SweepPlan, requests: int, tokens: int) -> bool:
        return not plan.kv_capacity_tokens or requests * tokens <= 0.9 * plan.kv_capacity_tokens

    async def _prefill_row(self, plan: SweepPlan, isl: int) -> list[PrefillPoint]:
        row = []
        for c in plan.concurrency:
            if not self._fits(plan, c, isl + 1):
                log.info("skipped prefill point input_tokens=%d concurrency=%d: exceeds KV", isl, c)
                continue
            timings = await self._batch(c, isl, 1)
            started = min(t.sent for t in timings)
            wall = max(t.tokens[0] for t in timings) - started
            ttft_ms = sum(t.tokens[0] - t.sent for t in timings) / c * 1000
            point = PrefillPoint(isl, c, ttft_ms, c * isl / wall)
            log.info("prefill input_tokens=%d concurrency=%d ttft_ms=%.2f tokens_per_s=%.0f",
                     isl, c, point.ttft_ms, point.tokens_per_s)  # fmt: skip
            row.append(point)
        return row

    async def _decode_row(self, plan: SweepPlan, ctx: int) -> list[DecodePoint]:
        row = []
        for b in plan.batch_sizes:
            point = await self._decode_point(plan, ctx, b)
            if point is not None:
                log.info("decode context_tokens=%d batch_size=%d itl_ms=%.2f tokens_per_s=%.0f",
                         ctx, b, point.itl_ms, point.tokens_per_s)  # fmt: skip
                row.append(point)
        return row

    async def _decode_point(self, plan: SweepPlan, ctx: int, b: int) -> DecodePoint | None:
        tokens = plan.decode_tokens
        # A large batch takes long to prefill: its first requests may finish decoding
        # before the last one starts. Then the requests generate more, up to 8x.
        for _ in range(4):
            if not self._fits(plan, b, ctx + tokens):
                log.info("skipped decode point context=%d batch=%d: exceeds KV", ctx, b)
                return None
            timings = await self._batch(b, ctx, tokens)
            start = max(t.tokens[0] for t in timings)
            end = min(t.tokens[-1] for t in timings)
            inside = sum(1 for t in timings for at in t.tokens[1:] if start < at <= end)
            if end > start and inside >= 2 * b:
                rate = inside / (end - start)
                return DecodePoint(b, ctx, b / rate * 1000, rate)
            tokens *= 2
        log.info("skipped decode point context=%d batch=%d: the batch never decoded together",
                 ctx, b)  # fmt: skip
        return None

    async def _batch(self, n: int, prompt_tokens: int, max_tokens: int) -> list[_Timing]:
        """`n` requests sent at once (their prompts made before the first is sent)."""
        prompts = [
            [self._rng.randrange(*_TOKEN_RANGE) for _ in range(prompt_tokens)] for _ in range(n)
        ]
        return list(await asyncio.gather(*(self._one(p, max_tokens) for p in prompts)))

    async def _one(self, prompt: list[int], max_tokens: int) -> _Timing:
        request = worker_pb2.GenerateRequest(
            request_id=f"profile-{uuid.uuid4().hex[:12]}",
            token_ids=prompt,
            sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        )
        timing = _Timing(time.perf_counter(), [])
        async for response in self._stub.Generate(request, timeout=600):
            now = time.perf_counter()
            timing.tokens.extend([now] * len(response.token_ids))
        if not timing.tokens:
            raise RuntimeError(f"the worker returned no token for a {len(prompt)}-token prompt")
        return timing
