"""A synthetic worker profile with closed-form surfaces, for planner unit tests."""

from __future__ import annotations

from tandem.planner.profile import DecodePoint, PrefillPoint, WorkerProfile

PREFILL_TOKENS_PER_S = 10_000.0


def ttft_ms(isl: float, concurrency: float) -> float:
    # Prompts arriving together are prefilled one after another: the mean waits half the batch.
    return (concurrency + 1) / 2 * isl / PREFILL_TOKENS_PER_S * 1000


def itl_ms(batch: float, context: float) -> float:
    return 10.0 + 0.2 * batch + context / 1000


def synthetic_profile() -> WorkerProfile:
    prefill = tuple(
        PrefillPoint(isl, c, ttft_ms(isl, c), PREFILL_TOKENS_PER_S)
        for isl in (128, 512, 2048, 8192)
        for c in (1, 2, 4, 8)
    )
    decode = tuple(
        DecodePoint(b, ctx, itl_ms(b, ctx), b / itl_ms(b, ctx) * 1000)
        for ctx in (512, 2048, 8192)
        for b in (1, 8, 32, 128)
    )
    return WorkerProfile("mocker", "m", prefill, decode)
