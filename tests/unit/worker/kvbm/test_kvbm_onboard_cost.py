"""Cost-aware onboarding: the estimates learned from measurements, and the choice per tier."""

from __future__ import annotations

import pytest
from tandem.runtime.kv_tiers import DISK_TIER, HOST_TIER
from tandem.worker.kvbm.onboard_cost import OnboardCost


def fed(steps: list[tuple[int, float]], block_size: int = 16) -> OnboardCost:
    cost = OnboardCost(block_size)
    for num_tokens, seconds in steps:
        cost.prefilled(num_tokens, seconds)
    return cost


def mocker_step(num_tokens: int) -> float:
    # The mocker's default prefill model: 15 ms a step + 20 us a token.
    return 0.015 + 20e-6 * num_tokens


def test_unmeasured_tiers_are_trusted() -> None:
    cost = OnboardCost(16)
    assert cost.prefill_token_seconds is None and cost.copy_seconds(DISK_TIER) is None
    assert cost.worth_onboarding(HOST_TIER) and cost.worth_onboarding(DISK_TIER)
    cost.copied(DISK_TIER, 1.0)  # a very slow copy, but nothing to weigh it against yet
    assert cost.worth_onboarding(DISK_TIER)
    cost = fed([(1000, mocker_step(1000))])  # recompute measured, no copy yet
    assert cost.worth_onboarding(DISK_TIER)


def test_the_step_fit_finds_the_marginal_token_cost_not_the_fixed_one() -> None:
    cost = fed([(n, mocker_step(n)) for n in [500, 3000, 1200, 8000, 700, 4000] * 10])
    assert cost.prefill_token_seconds == pytest.approx(20e-6, rel=1e-6)
    # Steps all of one size: no slope to fit, the average per token stands in (it includes
    # the fixed cost, so it leans towards copying).
    same = fed([(2000, mocker_step(2000))] * 5)
    assert same.prefill_token_seconds == pytest.approx(mocker_step(2000) / 2000)
    # Steps that do not grow with tokens (noise): never a negative or zero cost.
    noise = fed([(100, 0.02), (1000, 0.01), (500, 0.02)])
    assert noise.prefill_token_seconds is not None and noise.prefill_token_seconds > 0


def test_a_tier_slower_than_recomputing_is_declined_a_faster_one_is_not() -> None:
    cost = fed([(n, mocker_step(n)) for n in [500, 3000, 1200, 8000] * 5])
    # Recomputing a 16-token block: 320 us. The mocker's defaults for 2 MiB blocks: the
    # host link 25 GB/s (84 us a block), the disk 5 GB/s (419 us a block).
    cost.copied(HOST_TIER, 2 * 2**20 / 25e9)
    cost.copied(DISK_TIER, 2 * 2**20 / 5e9)
    assert cost.worth_onboarding(HOST_TIER)
    assert not cost.worth_onboarding(DISK_TIER)
    # A faster drive, measured: the mean follows it and the disk is worth it again.
    for _ in range(50):
        cost.copied(DISK_TIER, 2 * 2**20 / 10e9)
    assert cost.copy_seconds(DISK_TIER) == pytest.approx(2 * 2**20 / 10e9, rel=0.01)
    assert cost.worth_onboarding(DISK_TIER)


def test_the_margin_scales_what_recomputing_is_allowed_to_cost() -> None:
    cost = OnboardCost(16, margin=2.0)
    for n in [500, 3000, 1200, 8000]:
        cost.prefilled(n, mocker_step(n))
    cost.copied(DISK_TIER, 600e-6)  # slower than 320 us, faster than 2 x 320 us
    assert cost.worth_onboarding(DISK_TIER)
    with pytest.raises(ValueError):
        OnboardCost(0)
