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

Lower tiers. A worker with a KV block manager copies a prefix it holds in
host memory or on disk back into device blocks instead of computing it, so
such a block counts as a hit credited with a share of a device hit's saving:

    overlap = device_blocks + host_weight * host_blocks + disk_weight * disk_blocks

The shares follow from what `PREFILL_BLOCK_COST` is made of: half the
compute of the block, half the stall of the sequences decoding beside it.
An onboarding copy runs beside the engine's steps (no stall: that half is
saved whatever the tier) and delays only its own request, by the copy time
instead of the compute time. For an ~8B model (GQA, 32 layers, bf16: 128 KiB
of KV per token, 2 MiB per 16-token block) the block's compute is ~320 us;
the copy from pinned host memory over PCIe Gen4 x16 (~25 GB/s, twice that on
Gen5) is ~85 us, a quarter of it: 0.5 + 0.5 * 0.75 = 0.875, and
`DEFAULT_HOST_HIT_WEIGHT` = 0.8 leaves room for the offloads that share the
link. A disk read of the block (NVMe at 3-7 GB/s: 300-700 us, plus the copy
up) takes about as long as computing it or longer: it saves the stall and
the GPU time, not the request's wait, so `DEFAULT_DISK_HIT_WEIGHT` = 0.5.
Bigger models raise both (compute grows faster than KV bytes per token); a
CPU-only engine, where prefill is slow and the "device" pool is host memory,
makes both nearly 1 (the flags are there for it). Weight 0 ignores the tier.
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
DEFAULT_HOST_HIT_WEIGHT = 0.8
"""Share of a device hit's saving a block onboarded from host memory is credited with."""
DEFAULT_DISK_HIT_WEIGHT = 0.5
"""Share of a device hit's saving a block onboarded from disk is credited with."""
TIE_TOLERANCE = 1e-9
"""Costs within this of the least tie (`pick`)."""


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
    host_blocks: int = 0
    """Leading blocks beyond `overlap_blocks` it would onboard from host memory..."""
    disk_blocks: int = 0
    """...and beyond those, from disk."""


def credited_overlap(
    device_blocks: int,
    host_blocks: int,
    disk_blocks: int,
    host_weight: float = DEFAULT_HOST_HIT_WEIGHT,
    disk_weight: float = DEFAULT_DISK_HIT_WEIGHT,
) -> float:
    """The hit, in device blocks, of a worker holding a prefix across its tiers."""
    return device_blocks + host_weight * host_blocks + disk_weight * disk_blocks


def prefill_blocks(
    c: Candidate,
    prompt_blocks: int,
    block_size: int,
    host_weight: float = DEFAULT_HOST_HIT_WEIGHT,
    disk_weight: float = DEFAULT_DISK_HIT_WEIGHT,
) -> float:
    """Blocks `c` would still compute (onboarded ones credited with their tier's weight):
    uncached request blocks + its queued prefill."""
    hit = credited_overlap(c.overlap_blocks, c.host_blocks, c.disk_blocks, host_weight, disk_weight)
    return prompt_blocks - min(hit, prompt_blocks) + c.queued_prefill_tokens / block_size


def costs(
    overlap_blocks: Sequence[float],
    queued_prefill_tokens: Sequence[int],
    active_decode_blocks: Sequence[int],
    prompt_blocks: int,
    request_blocks: int,
    block_size: int,
    overlap_weight: float,
) -> list[float]:
    """Cost per candidate (parallel sequences, one entry per worker) of a request of
    `prompt_blocks` full blocks that holds `request_blocks` blocks. Overlaps (credited ones,
    see `credited_overlap`) are at most `prompt_blocks` (they come from a walk over the
    prompt's own blocks)."""
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
        tied = [i for i, c in enumerate(cost) if c <= best + TIE_TOLERANCE]
        if len(tied) > 1:
            least = min(active_decode_blocks[i] for i in tied)
            tied = [i for i in tied if active_decode_blocks[i] <= least]
        return tied[0] if len(tied) == 1 else rng.choice(tied)
    scale = max(cost) or 1.0
    logits = [-c / scale / temperature for c in cost]
    top = max(logits)
    weights = [math.exp(v - top) for v in logits]
    return rng.choices(range(len(cost)), weights=weights, k=1)[0]
