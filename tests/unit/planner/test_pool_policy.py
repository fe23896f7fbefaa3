"""--mode load of a disaggregated model: prefill on its queue, decode on KV usage, one budget."""

from __future__ import annotations

from dataclasses import replace

from tandem.planner.config import PlannerConfig
from tandem.planner.policy import PolicyState, Thresholds, WorkerLoad, decide_prefill
from tandem.planner.pool_policy import PoolsDecision, PoolThresholds, decide_pools

BASE = Thresholds(scale_up_intervals=2, scale_down_intervals=2, max_wait_intervals=3)
T = PoolThresholds(
    prefill=replace(BASE, max_workers=3), decode=replace(BASE, max_workers=4), max_workers=5
)


def usage(*fractions: float) -> list[WorkerLoad]:
    return [WorkerLoad(f"d{i}", round(f * 100), 100) for i, f in enumerate(fractions)]


def run(
    live: dict[str, int], intervals: list[tuple[list[WorkerLoad], int | None]]
) -> list[PoolsDecision]:
    """One (decode loads, prefill depth) per interval; the pools follow every change."""
    states: dict[str, PolicyState] = {}
    out = []
    for decode_loads, depth in intervals:
        d = decide_pools(live, {"decode": decode_loads}, depth, T, states)
        out.append(d)
        states, live = d.states, d.targets
    return out


def test_high_kv_usage_grows_the_decode_pool_alone() -> None:
    decisions = run({"prefill": 1, "decode": 1}, [(usage(0.9), 0)] * 2)
    assert decisions[0].targets == {"prefill": 1, "decode": 1} and not decisions[0].changed
    last = decisions[-1]
    assert last.changed and last.targets == {"prefill": 1, "decode": 2}
    assert (last.decisions["decode"].direction, last.decisions["prefill"].direction) == (
        "up",
        "hold",
    )
    assert "decode up: high load" in last.reason and "kv_usage=0.90" in last.reason


def test_a_deep_prefill_queue_grows_the_prefill_pool_alone() -> None:
    # 5 jobs on 2 prefill workers: 2.5 a worker, above the 2.0 threshold.
    last = run({"prefill": 2, "decode": 1}, [(usage(0.5), 5)] * 2)[-1]
    assert last.targets == {"prefill": 3, "decode": 1}
    assert "prefill_queue=5 queue_per_worker=2.50" in last.decisions["prefill"].reason


def test_an_empty_queue_shrinks_the_prefill_pool_only_while_one_fewer_fits() -> None:
    shrunk = run({"prefill": 3, "decode": 1}, [(usage(0.5), 0)] * 2)[-1]
    assert shrunk.targets == {"prefill": 2, "decode": 1}
    assert "projected queue_per_worker on 2 workers 0.00" in shrunk.reason
    # 1 job on 3 workers is calm (0.33/worker), and on 2 it still fits: down.
    assert run({"prefill": 3, "decode": 1}, [(usage(0.5), 1)] * 2)[-1].targets["prefill"] == 2
    # 3 jobs on 2 workers: neither high (2.0) nor calm (0.5).
    held = decide_prefill(2, 3, T.prefill, PolicyState())
    assert held.direction == "hold" and "within thresholds" in held.reason


def test_an_unreadable_queue_holds_the_prefill_pool() -> None:
    d = decide_pools({"prefill": 2, "decode": 1}, {"decode": usage(0.5)}, None, T, {})
    assert d.targets["prefill"] == 2 and "prefill queue depth unknown" in d.reason


def test_growth_past_the_budget_holds_prefill_first_and_grows_once_room_is_made() -> None:
    states = {"prefill": PolicyState(target=2, high=1), "decode": PolicyState(target=2, high=1)}
    live = {"prefill": 2, "decode": 2}
    # Both pools high, one worker left in the budget of 5: decode gets it.
    d = decide_pools(live, {"decode": usage(0.9, 0.9)}, 8, T, states)
    assert d.targets == {"prefill": 2, "decode": 3}
    assert "--max-workers=5" in d.decisions["prefill"].reason
    assert d.decisions["prefill"].state.target == 2
    # Prefill stays high and held while decode is busy ...
    live, states = d.targets, d.states
    d = decide_pools(live, {"decode": usage(0.1, 0.1, 0.1)}, 8, T, states)
    assert d.targets == {"prefill": 2, "decode": 3}
    # ... and grows the interval decode shrinks (the connector shrinks first).
    d = decide_pools(d.targets, {"decode": usage(0.1, 0.1, 0.1)}, 8, T, d.states)
    assert d.targets == {"prefill": 3, "decode": 2}


def test_pools_stay_within_their_own_bounds() -> None:
    states = {"prefill": PolicyState(target=3), "decode": PolicyState(target=1)}
    d = decide_pools({"prefill": 3, "decode": 1}, {"decode": usage(0.5)}, 100, T, states)
    assert d.targets["prefill"] == 3 and "already at max_workers=3" in d.reason


def test_the_config_builds_each_pools_thresholds() -> None:
    config = PlannerConfig(max_workers=6, min_prefill_workers=2, max_prefill_workers=3,
                           max_decode_workers=5, scale_up_prefill_queue=4.0)  # fmt: skip
    t = config.pool_thresholds
    assert (t.prefill.min_workers, t.prefill.max_workers, t.prefill.scale_up_queue) == (2, 3, 4.0)
    assert (t.decode.min_workers, t.decode.max_workers, t.max_workers) == (1, 5, 6)
    assert t.decode.scale_up_kv_usage == config.scale_up_kv_usage
