from __future__ import annotations

import random
from collections import Counter

from tandem.router.cost_model import PREFILL_BLOCK_COST, Candidate, costs, pick, prefill_blocks


def choose(cands, prompt_blocks, weight=1.0, temperature=0.0, rng=None):
    _, ov, queued, active = zip(*cands, strict=True)
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
