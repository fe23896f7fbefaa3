"""The KV router's cost of sending one request to each worker, and the pick.

    cost = kv_overlap_score_weight * prefill_blocks + decode_blocks

`prefill_blocks` is work the worker still has to compute before this
request's first token: the request's blocks it does not hold, plus the
prefill tokens already queued on it beyond what one step takes (in blocks,
`backlog_tokens`). `decode_blocks` is what it holds for active requests once
this one is added, each counted with its prompt and expected output
(`request_blocks`).

Units (why the default weight of 1.0 works). The two terms are measured in
the same currency, GPU time, instead of raw block counts. Computing one
block of prefill is compute-bound: `block_size` full forward passes (about
16 x 20 us = 320 us for an ~8B model on one modern GPU). Holding one block
costs a KV read of `block_size` tokens per decode step (about 16 x 40 ns =
0.6 us), i.e. a prefill block is worth ~500 steps of holding a block, and a
request holds its blocks for its remaining output: outputs of tens to a few
hundred tokens, half done on average, make ~60 steps: ~8 blocks held. And
prefill is paid twice: a step that prefills stalls every sequence decoding
on that worker for as long, so with anything running there one block of
prefill costs about as much as holding `PREFILL_BLOCK_COST` = 2 x 8 = 16
blocks through a typical request's remaining life. At 8 (the stall left
out) decode-load jitter between busy workers outweighed the hits that are
specific to one conversation (bench/routing_quality.py `high-conc`: 81 % of
prompt tokens cached against the oracle's 87.5 %; 87 % at 16).
Counting both in raw blocks (a common router default) prices a cache hit at
one request's worth of decode load; ordinary load jitter between workers is
several requests, so such a router scatters conversations and routes a
multi-turn chat workload no better than round-robin until its prefill
weight is raised several-fold. Here `prefill_blocks` is scaled by
`PREFILL_BLOCK_COST`, so at the default weight a hit is kept unless the
worker is ~16 requests' worth busier, and queued prefill (same units as the
hit it competes with) still spreads bursts. bench/routing_quality.py shows
both on a multi-turn chat workload (rows `kv` and `kv (raw units)`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

PREFILL_BLOCK_COST = 16.0
"""GPU time of computing one prefill block and the decode stall it causes, in units of holding
one block for a request's life."""
STEP_PREFILL_TOKENS = 2048
"""Prefill tokens one engine step computes (the engines' default max_num_batched_tokens)."""
OUTPUT_ESTIMATE_CAP_TOKENS = 1024
"""Output tokens a request's decode load counts at most (its max_tokens hint, else unknown)."""


def request_blocks(prompt_tokens: int, max_tokens: int, block_size: int) -> int:
    """Blocks a request holds by its end: its prompt and its expected output.

    The output counts too (capped, since a missing max_tokens is guessed from the context
    length): it is most of a short prompt's blocks, and the workers' LoadMetrics count it.
    Counting only the prompt's blocks made every report show the requests' output as load
    the router had not sent; that excess, refreshed only with each report, outweighed
    the router's own counts, so equal requests piled onto whichever workers' requests had
    decoded least when they last reported (11 to 39 per worker instead of 32 at 256
    streams).
    """
    output = min(max(max_tokens, 0), OUTPUT_ESTIMATE_CAP_TOKENS)
    return -(-(prompt_tokens + output) // block_size)


def backlog_tokens(queued_prefill_tokens: int) -> int:
    """Queued prefill that delays a new request's first token: what one step cannot take.

    Prompts queued together are prefilled in one step, and a step that prefills costs the
    worker's running sequences a stall whatever it holds; a short prompt that joins one
    already due is nearly free, one sent elsewhere starts another. Pricing every queued
    token scattered each burst of short prompts over all workers, one prefill step each
    (4 to 7 % fewer tokens/s than round-robin in bench/routing_balance.py); only a
    backlog beyond a step pushes away.
    """
    return max(0, queued_prefill_tokens - STEP_PREFILL_TOKENS)


class Candidate(NamedTuple):
    """What the cost model knows about one worker for one request."""

    instance_id: str
    overlap_blocks: int
    queued_prefill_tokens: int
    active_decode_blocks: int


def prefill_blocks(c: Candidate, prompt_blocks: int, block_size: int) -> float:
    """Blocks `c` would still compute: uncached request blocks + its queued prefill."""
    return (
        prompt_blocks - min(c.overlap_blocks, prompt_blocks) + c.queued_prefill_tokens / block_size
    )


def costs(
    overlap_blocks: Sequence[int],
    queued_prefill_tokens: Sequence[int],
    active_decode_blocks: Sequence[int],
    prompt_blocks: int,
    request_blocks: int,
    block_size: int,
    overlap_weight: float,
) -> list[float]:
    """Cost per candidate (parallel sequences, one entry per worker) of a request of
    `prompt_blocks` full blocks that holds `request_blocks` blocks. Overlaps are at most
    `prompt_blocks` (they come from a walk over the prompt's own blocks)."""
    w = overlap_weight * PREFILL_BLOCK_COST
    base = w * prompt_blocks + request_blocks
    per_token = w / block_size
    return [
        base - w * ov + per_token * queued + active
        for ov, queued, active in zip(
            overlap_blocks, queued_prefill_tokens, active_decode_blocks, strict=True
        )
    ]


def pick(
    cost: Sequence[float],
    active_decode_blocks: Sequence[int],
    temperature: float,
    rng: random.Random,
) -> int:
    """Index of the chosen candidate.

    Temperature 0: the cheapest (ties: fewer active decode blocks, then
    random). Above 0: sample from softmax(-cost / max_cost / temperature), so
    the temperature means the same whatever the prompt length.
    """
    if not cost:
        raise ValueError("no candidates")
    if temperature <= 0 or len(cost) == 1:
        best = min(cost)
        tied = [i for i, c in enumerate(cost) if c <= best + 1e-9]
        if len(tied) > 1:
            least = min(active_decode_blocks[i] for i in tied)
            tied = [i for i in tied if active_decode_blocks[i] <= least]
        return tied[0] if len(tied) == 1 else rng.choice(tied)
    scale = max(cost) or 1.0
    logits = [-c / scale / temperature for c in cost]
    top = max(logits)
    weights = [math.exp(v - top) for v in logits]
    return rng.choices(range(len(cost)), weights=weights, k=1)[0]
