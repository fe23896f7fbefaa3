"""The scaling policy: up, down, hold, hysteresis, clamping, the projected-usage guard, waiting."""

from __future__ import annotations

from collections.abc import Sequence

from tandem.planner.policy import Decision, PolicyState, Thresholds, WorkerLoad, decide

T = Thresholds(
    min_workers=1,
    max_workers=4,
    scale_up_kv_usage=0.8,
    scale_up_waiting=1.0,
    scale_down_kv_usage=0.3,
    scale_up_intervals=2,
    scale_down_intervals=3,
    max_wait_intervals=3,
)


def loads(*usages: float, waiting: int = 0, total: int = 100) -> list[WorkerLoad]:
    return [
        WorkerLoad(f"w{i}", active_blocks=round(u * total), total_blocks=total, num_waiting=waiting)
        for i, u in enumerate(usages)
    ]


def run(
    observed: int, each: Sequence[Sequence[WorkerLoad]], state: PolicyState, t: Thresholds = T
) -> list[Decision]:
    """Feed one observation per interval; the pool is assumed to follow every change."""
    out = []
    for interval_loads in each:
        decision = decide(observed, interval_loads, t, state)
        out.append(decision)
        state = decision.state
        observed = decision.replicas
    return out


def test_high_kv_usage_scales_up_by_one_after_the_consecutive_intervals() -> None:
    first, second = run(1, [loads(0.9), loads(0.9)], PolicyState())
    assert (first.replicas, first.direction) == (1, "hold")
    assert "1/2 intervals" in first.reason
    assert (second.replicas, second.direction) == (2, "up")
    assert "kv_usage=0.90" in second.reason
    assert second.state == PolicyState(target=2)


def test_waiting_requests_per_worker_scale_up_too() -> None:
    decisions = run(2, [loads(0.5, 0.5, waiting=2)] * 2, PolicyState(target=2))
    assert decisions[-1].replicas == 3
    assert "waiting_per_worker=2.00" in decisions[-1].reason


def test_one_calm_interval_resets_the_scale_up_count() -> None:
    decisions = run(1, [loads(0.9), loads(0.5), loads(0.9)], PolicyState(target=1))
    assert [d.replicas for d in decisions] == [1, 1, 1]
    assert decisions[-1].state.high == 1


def test_low_usage_scales_down_after_three_intervals() -> None:
    decisions = run(3, [loads(0.1, 0.1, 0.1)] * 3, PolicyState(target=3))
    assert [d.direction for d in decisions] == ["hold", "hold", "down"]
    assert decisions[-1].replicas == 2
    assert "projected kv_usage on 2 workers 0.15" in decisions[-1].reason


def test_no_scale_down_while_anyone_waits() -> None:
    decisions = run(2, [loads(0.1, 0.1, waiting=1)] * 5, PolicyState(target=2))
    assert all(d.replicas == 2 and d.direction == "hold" for d in decisions)


def test_no_scale_down_when_one_fewer_worker_would_be_over_the_scale_up_threshold() -> None:
    # Scale-down threshold above half the scale-up one: 0.45 on two workers is
    # "low", yet 0.9 on one would scale straight back up.
    t = Thresholds(min_workers=1, max_workers=4, scale_down_kv_usage=0.5, scale_down_intervals=1)
    [decision] = run(2, [loads(0.45, 0.45)], PolicyState(target=2), t)
    assert (decision.replicas, decision.direction) == (2, "hold")
    assert "would reach kv_usage 0.90" in decision.reason
    [decision] = run(2, [loads(0.35, 0.35)], PolicyState(target=2), t)
    assert (decision.replicas, decision.direction) == (1, "down")


def test_middle_load_holds_and_clears_both_counters() -> None:
    [decision] = run(2, [loads(0.5, 0.5)], PolicyState(target=2, high=1, low=2))
    assert decision.direction == "hold"
    assert "within thresholds" in decision.reason
    assert (decision.state.high, decision.state.low) == (0, 0)


def test_stays_within_min_and_max() -> None:
    decisions = run(4, [loads(1.0, 1.0, 1.0, 1.0)] * 3, PolicyState(target=4))
    assert all(d.replicas == 4 for d in decisions)
    assert "already at max_workers=4" in decisions[-1].reason
    decisions = run(1, [loads(0.0)] * 4, PolicyState(target=1))
    assert all(d.replicas == 1 for d in decisions)
    assert "already at min_workers=1" in decisions[-1].reason


def test_a_pool_outside_the_bounds_is_clamped_at_once() -> None:
    [decision] = run(6, [loads(0.5)], PolicyState())
    assert (decision.replicas, decision.direction) == (4, "down")
    assert "clamped to max_workers" in decision.reason
    [decision] = run(0, [[]], PolicyState())
    assert (decision.replicas, decision.direction) == (1, "up")


def test_no_load_reports_hold() -> None:
    [decision] = run(2, [[]], PolicyState(target=2))
    assert (decision.replicas, decision.direction) == (2, "hold")
    assert "no recent load reports" in decision.reason


def test_first_decision_without_a_target_starts_from_the_live_pool() -> None:
    [decision] = run(3, [loads(0.5, 0.5, 0.5)], PolicyState())
    assert (decision.replicas, decision.direction) == (3, "hold")
    assert decision.state.target is None


def test_waits_for_the_pool_to_reach_the_last_target_then_gives_up() -> None:
    state = PolicyState(target=2)
    high = loads(0.95)  # only one of the two asked-for workers is live
    for waited in range(1, T.max_wait_intervals + 1):
        decision = decide(1, high, T, state)
        assert (decision.replicas, decision.direction) == (2, "hold")
        assert "waiting for the pool to reach 2 workers (live: 1)" in decision.reason
        assert decision.state.waited == waited
        assert decision.state.high == 0  # load seen while waiting does not count
        state = decision.state
    decision = decide(1, high, T, state)
    assert "gave up waiting for 2 workers" in decision.notice
    assert decision.state.high == 1
    decision = decide(1, high, T, decision.state)
    assert decision.notice == ""  # said once
    assert (decision.replicas, decision.direction) == (3, "up")


def test_waiting_ends_as_soon_as_the_pool_reaches_the_target() -> None:
    decision = decide(1, loads(0.9), T, PolicyState(target=2))
    assert decision.state.waited == 1
    decision = decide(2, loads(0.9, 0.9), T, decision.state)
    assert decision.state == PolicyState(target=2, high=1, low=0, waited=0)
