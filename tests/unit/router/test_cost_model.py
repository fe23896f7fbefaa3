from __future__ import annotations

import random
from collections import Counter

import pytest
from tandem.router.cost_model import (
    DEFAULT_DISK_HIT_WEIGHT,
    DEFAULT_HOST_HIT_WEIGHT,
    PREFILL_BLOCK_COST,
    Candidate,
    costs,
    credited_overlap,
    pick,
    prefill_blocks,
)


def choose(
    cands, prompt_blocks, weight=1.0, temperature=0.0, rng=None, host_weight=0.8, disk_weight=0.5
):
    ov = [
        credited_overlap(c.overlap_blocks, c.host_blocks, c.disk_blocks, host_weight, disk_weight)
        for c in cands
    ]
    queued = [c.queued_prefill_tokens for c in cands]
    active = [c.active_decode_blocks for c in cands]
    cost = costs(ov, queued, active, prompt_blocks, prompt_blocks, 16, weight)
    return cands[pick(cost, active, temperature, rng or random.Random(0))].instance_id


def test_cost_formula():
    c = Candidate("w", overlap_blocks=3, queued_prefill_tokens=32, active_decode_blocks=5)
    assert prefill_blocks(c, 10, 16) == 7 + 2
    [cost] = costs(
        [3], [32], [5], prompt_blocks=10, request_blocks=11, block_size=16, overlap_weight=2.0
    )
    assert cost == 2.0 * PREFILL_BLOCK_COST * 9 + (5 + 11)


def test_temperature_zero_picks_cheapest_then_less_loaded():
    assert (
        choose([Candidate("a", 10, 0, 50), Candidate("b", 0, 0, 0)], 10) == "a"
    )  # hit beats 50 blocks
    assert choose([Candidate("a", 10, 0, 500), Candidate("b", 0, 0, 0)], 10) == "b"
    # Queued prefill is the same currency as the hit: a backlog pushes requests away.
    assert choose([Candidate("a", 10, 16 * 30, 0), Candidate("b", 0, 0, 0)], 10) == "b"
    # Equal cost: ties go to the one with fewer decode blocks, else random.
    assert (
        choose([Candidate("a", 1, 0, 8), Candidate("b", 0, 0, 0)], 4, weight=1 / PREFILL_BLOCK_COST)
        == "b"
    )
    rng = random.Random(0)
    tied = [Candidate("a", 0, 0, 0), Candidate("b", 0, 0, 0), Candidate("c", 0, 0, 0)]
    assert {choose(tied, 4, rng=rng) for _ in range(300)} == {"a", "b", "c"}


def test_zero_weight_is_pure_load_balancing():
    assert choose([Candidate("a", 10, 0, 5), Candidate("b", 0, 0, 0)], 10, weight=0.0) == "b"


def test_temperature_samples_by_softmax():
    rng = random.Random(1)
    cands = [Candidate("a", 10, 0, 0), Candidate("b", 0, 0, 0)]
    hot = Counter(choose(cands, 10, temperature=0.1, rng=rng) for _ in range(2000))
    warm = Counter(choose(cands, 10, temperature=10.0, rng=rng) for _ in range(2000))
    assert hot["a"] > 1900  # near-greedy
    assert 800 < warm["b"] < 1200  # near-uniform


def test_a_hit_outweighs_the_decode_load_of_a_dozen_short_requests():
    """Computing a block also stalls every sequence decoding on the worker, so a hit is
    kept against up to 16 blocks of extra decode load per block it saves.
    At 8 (the stall left out), busy workers' decode jitter scattered conversations at high
    concurrency; here the worker holding all 10 blocks wins despite 120 more decode blocks."""
    assert choose([Candidate("a", 10, 0, 120), Candidate("b", 0, 0, 0)], 10) == "a"
    assert choose([Candidate("a", 10, 0, 170), Candidate("b", 0, 0, 0)], 10) == "b"


def test_a_prefix_in_host_memory_beats_a_cold_worker_but_not_a_device_hit():
    device = Candidate("device", 10, 0, 0)
    host = Candidate("host", 0, 0, 0, host_blocks=10)
    disk = Candidate("disk", 0, 0, 0, disk_blocks=10)
    cold = Candidate("cold", 0, 0, 0)
    assert choose([host, cold], 10) == "host"
    assert choose([disk, cold], 10) == "disk"
    assert choose([device, host], 10) == "device"  # equal load: the device hit wins
    assert choose([host, disk], 10) == "host"
    # Less strongly: the load a host hit outweighs is its weight's share of a device hit's.
    loaded = PREFILL_BLOCK_COST * 10 * 0.8 - 1  # decode blocks just below the host hit's worth
    assert choose([host._replace(active_decode_blocks=int(loaded)), cold], 10) == "host"
    assert choose([device._replace(active_decode_blocks=int(loaded) + 20), cold], 10) == "device"
    assert choose([host._replace(active_decode_blocks=int(loaded) + 20), cold], 10) == "cold"


def test_a_tier_weight_of_zero_ignores_the_tier():
    host = Candidate("host", 0, 0, 5, host_blocks=10)
    cold = Candidate("cold", 0, 0, 0)
    assert choose([host, cold], 10, host_weight=0.0) == "cold"
    assert choose([Candidate("disk", 0, 0, 5, disk_blocks=10), cold], 10, disk_weight=0.0) == "cold"
    # A device run followed by host blocks: only the device part counts at weight 0.
    assert credited_overlap(4, 6, 2, 0.0, 0.0) == 4
    assert credited_overlap(4, 6, 2, 0.5, 0.25) == 4 + 3 + 0.5


def test_prefill_blocks_credit_onboarded_blocks_by_their_tier():
    c = Candidate("w", overlap_blocks=2, queued_prefill_tokens=0, active_decode_blocks=0)
    assert prefill_blocks(c._replace(host_blocks=4, disk_blocks=2), 10, 16) == pytest.approx(
        10 - (2 + 4 * DEFAULT_HOST_HIT_WEIGHT + 2 * DEFAULT_DISK_HIT_WEIGHT)
    )
    assert 0 < DEFAULT_DISK_HIT_WEIGHT < DEFAULT_HOST_HIT_WEIGHT < 1
