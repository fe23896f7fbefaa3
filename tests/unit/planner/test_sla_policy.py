"""The SLA policy: replicas from predicted demand and the profile, corrected by observed latency."""

from __future__ import annotations

import dataclasses

import pytest
from profile_fakes import synthetic_profile
from tandem.planner.sla_policy import Demand, Observed, SlaBounds, SlaState, decide_sla

PROFILE = synthetic_profile()
BOUNDS = SlaBounds(ttft_ms=500, itl_ms=50, max_workers=16, scale_down_intervals=3)


def quiet(demand: Demand) -> Observed:
    return Observed(demand, None, None)


def test_replicas_follow_demand_over_what_one_worker_sustains() -> None:
    demand = Demand(request_rate=10, input_tokens=1000, output_tokens=200)
    d = decide_sla(PROFILE, BOUNDS, demand, quiet(demand), {"aggregated": 1}, SlaState())
    prefill_need = 10 * 1000 / d.prefill_capacity
    decode_need = 10 * 200 / d.decode_capacity
    assert prefill_need == pytest.approx(1.0)
    assert d.targets == {"aggregated": 2} == d.wanted  # ceil(1.0 + 0.51)
    assert d.changed and "prefill_capacity=10000tok/s" in d.reason
    assert 0.4 < decode_need < 0.6
    doubled = dataclasses.replace(demand, request_rate=20)
    d2 = decide_sla(PROFILE, BOUNDS, doubled, quiet(demand), {"aggregated": 2}, d.state)
    assert d2.targets == {"aggregated": 4}


def test_observed_latency_above_the_profile_adds_workers() -> None:
    demand = Demand(request_rate=10, input_tokens=1000, output_tokens=200)
    live = {"aggregated": 2}
    base = decide_sla(PROFILE, BOUNDS, demand, quiet(demand), live, SlaState())
    assert base.expected_itl_ms is not None
    slow = Observed(demand, ttft_ms=base.expected_ttft_ms, itl_ms=3 * base.expected_itl_ms)
    state = SlaState(targets={"aggregated": 2})
    for _ in range(4):  # the correction is smoothed: it builds up over intervals
        d = decide_sla(PROFILE, BOUNDS, demand, slow, live, state)
        state = d.state
    assert d.state.itl_correction > 2.5
    assert d.targets["aggregated"] > base.targets["aggregated"]
    assert "itl_correction=" in d.reason


def test_a_drop_shrinks_the_pool_only_once_it_lasts_and_bounds_hold() -> None:
    high = Demand(40, 1000, 200)
    low = Demand(2, 1000, 200)
    d = decide_sla(PROFILE, BOUNDS, high, quiet(high), {"aggregated": 1}, SlaState())
    top = d.targets["aggregated"]
    assert top > 3
    state = d.state
    sizes = []
    for _ in range(3):
        d = decide_sla(PROFILE, BOUNDS, low, quiet(low), {"aggregated": top}, state)
        state = d.state
        sizes.append(d.targets["aggregated"])
    assert sizes == [top, top, 1]
    capped = decide_sla(
        PROFILE, dataclasses.replace(BOUNDS, max_workers=3), high, quiet(high), {"aggregated": 1},
        SlaState(),
    )  # fmt: skip
    assert capped.targets == {"aggregated": 3} and capped.wanted["aggregated"] == top
    floor = decide_sla(
        PROFILE, dataclasses.replace(BOUNDS, min_workers=2), Demand(0, 0, 0),
        quiet(Demand(0, 0, 0)), {"aggregated": 2}, SlaState(),
    )  # fmt: skip
    assert floor.targets == {"aggregated": 2}


def test_prefill_and_decode_pools_are_sized_separately_within_the_budget() -> None:
    prompt_heavy = Demand(request_rate=30, input_tokens=2000, output_tokens=50)
    live = {"prefill": 1, "decode": 1}
    d = decide_sla(PROFILE, BOUNDS, prompt_heavy, quiet(prompt_heavy), live, SlaState())
    assert d.targets == {"prefill": 6, "decode": 1}  # 60k prompt tokens/s over 10k per worker
    output_heavy = Demand(request_rate=30, input_tokens=100, output_tokens=1000)
    d = decide_sla(PROFILE, BOUNDS, output_heavy, quiet(output_heavy), live, SlaState())
    assert d.targets["prefill"] == 1 and d.targets["decode"] > 3
    tight = dataclasses.replace(BOUNDS, max_workers=4)
    d = decide_sla(PROFILE, tight, prompt_heavy, quiet(prompt_heavy), live, SlaState())
    assert d.targets == {"prefill": 3, "decode": 1}
    assert sum(d.targets.values()) <= 4


def test_no_shrinking_while_workers_asked_for_are_still_starting() -> None:
    low = Demand(2, 1000, 200)
    state = SlaState(targets={"aggregated": 5})
    for _ in range(5):  # longer than the hysteresis: the pool has not reached 5 yet
        d = decide_sla(PROFILE, BOUNDS, low, quiet(low), {"aggregated": 2}, state)
        state = d.state
        assert d.targets == {"aggregated": 5} and "3 still starting" in d.reason
    d = decide_sla(PROFILE, BOUNDS, low, quiet(low), {"aggregated": 5}, state)
    assert d.targets == {"aggregated": 1}  # all five serve: the drop has lasted, it shrinks
    never = SlaState(targets={"aggregated": 5})
    for _ in range(3 * BOUNDS.scale_down_intervals):  # three never come: given up on
        d = decide_sla(PROFILE, BOUNDS, low, quiet(low), {"aggregated": 2}, never)
        never = d.state
    assert d.targets == {"aggregated": 1}
