"""The load-based scaling policy: a pure function from what the planner saw to a pool size.

No I/O and no clock: the service feeds it one observation per adjustment
interval and keeps the returned `PolicyState` for the next call, so every
branch can be tested with plain values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

Direction = Literal["up", "down", "hold"]


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One live worker's last load report (from `LoadMetrics`)."""

    instance_id: str
    active_blocks: int
    total_blocks: int
    num_running: int = 0
    num_waiting: int = 0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When to scale; validated by `PlannerConfig`, which builds it."""

    min_workers: int = 1
    max_workers: int = 8
    scale_up_kv_usage: float = 0.8
    scale_up_waiting: float = 1.0
    scale_down_kv_usage: float = 0.3
    scale_up_intervals: int = 2
    scale_down_intervals: int = 3
    max_wait_intervals: int = 6
    scale_up_queue: float = 2.0  # prefill pools: jobs (queued or running) per worker
    scale_down_queue: float = 0.5


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers between intervals.

    `target` is the last size asked for (None: nothing asked yet, the pool is
    what it is). `high`/`low` count consecutive intervals over/under the
    thresholds; `waited` counts intervals spent waiting for the pool to reach
    `target`.
    """

    target: int | None = None
    high: int = 0
    low: int = 0
    waited: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """The size to ask for, why, and the state to pass to the next call.

    `notice` is set for a one-off event worth an INFO line even when nothing
    changes (giving up waiting for the pool).
    """

    replicas: int
    direction: Direction
    reason: str
    state: PolicyState
    notice: str = ""


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """Pool-wide load figures the thresholds are compared with (KV usage, waiting requests)."""

    projected_name = "kv_usage"

    kv_usage: float
    waiting_per_worker: float
    num_waiting: int
    active_blocks: int
    mean_total_blocks: float

    @classmethod
    def of(cls, loads: Sequence[WorkerLoad]) -> LoadSummary:
        total = sum(w.total_blocks for w in loads)
        active = sum(w.active_blocks for w in loads)
        waiting = sum(w.num_waiting for w in loads)
        # Capacity-weighted: the pool's used blocks over its blocks, so one
        # small worker does not swing the mean.
        return cls(
            kv_usage=active / total if total else 0.0,
            waiting_per_worker=waiting / len(loads),
            num_waiting=waiting,
            active_blocks=active,
            mean_total_blocks=total / len(loads),
        )

    def projected_usage(self, workers: int) -> float:
        """KV usage if the same active blocks were spread over `workers` workers."""
        capacity = self.mean_total_blocks * workers
        return self.active_blocks / capacity if capacity > 0 else float("inf")

    def projected(self, workers: int) -> float:
        return self.projected_usage(workers)

    def is_high(self, t: Thresholds) -> bool:
        return self.kv_usage > t.scale_up_kv_usage or self.waiting_per_worker > t.scale_up_waiting

    def is_calm(self, t: Thresholds) -> bool:
        return self.kv_usage < t.scale_down_kv_usage and self.num_waiting == 0

    def fits(self, projected: float, t: Thresholds) -> bool:
        return projected <= t.scale_up_kv_usage

    def describe(self) -> str:
        return f"kv_usage={self.kv_usage:.2f} waiting_per_worker={self.waiting_per_worker:.2f}"

    def high_when(self, t: Thresholds) -> str:
        return f"kv_usage>{t.scale_up_kv_usage} or waiting_per_worker>{t.scale_up_waiting}"


def _clamp(value: int, t: Thresholds) -> int:
    return max(t.min_workers, min(t.max_workers, value))


class PoolLoad(Protocol):
    """A pool's load as the thresholds judge it: `LoadSummary` (KV usage) or `QueueLoad`."""

    def is_high(self, t: Thresholds) -> bool: ...

    def is_calm(self, t: Thresholds) -> bool: ...

    def projected(self, workers: int) -> float:
        """The figure the scale-up threshold is compared with, were the load on `workers`."""
        ...

    def fits(self, projected: float, t: Thresholds) -> bool: ...

    def describe(self) -> str: ...

    def high_when(self, t: Thresholds) -> str:
        """The scale-up thresholds, for reasons."""
        ...

    projected_name: str


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """A prefill pool's load: its jobs in the prefill queue (queued or running) over its workers."""

    depth: int
    workers: int
    projected_name = "queue_per_worker"

    def projected(self, workers: int) -> float:
        return self.depth / workers if workers > 0 else float("inf")

    def is_high(self, t: Thresholds) -> bool:
        return self.projected(self.workers) > t.scale_up_queue

    def is_calm(self, t: Thresholds) -> bool:
        return self.projected(self.workers) < t.scale_down_queue

    def fits(self, projected: float, t: Thresholds) -> bool:
        return projected <= t.scale_up_queue

    def describe(self) -> str:
        return f"prefill_queue={self.depth} queue_per_worker={self.projected(self.workers):.2f}"

    def high_when(self, t: Thresholds) -> str:
        return f"queue_per_worker>{t.scale_up_queue}"


def decide(
    observed: int, loads: Sequence[WorkerLoad], t: Thresholds, state: PolicyState
) -> Decision:
    """One interval's decision for an aggregated (or decode) pool, on KV usage and waiting.

    `observed` is the number of live workers of the pool; `loads` holds the
    recent reports of those among them that reported.
    """
    load = LoadSummary.of(loads) if loads else None
    return decide_on(observed, load, t, state, "no recent load reports from live workers")


def decide_prefill(observed: int, depth: int | None, t: Thresholds, state: PolicyState) -> Decision:
    """One interval's decision for a prefill pool, on its prefill queue depth (None: unknown)."""
    load = QueueLoad(depth, max(observed, 1)) if depth is not None else None
    return decide_on(observed, load, t, state, "prefill queue depth unknown")


def decide_on(
    observed: int, load: PoolLoad | None, t: Thresholds, state: PolicyState, no_load: str
) -> Decision:
    """One interval's decision on `load` (None: nothing to judge it by, `no_load` says why)."""
    current = state.target if state.target is not None else observed
    clamped = _clamp(current, t)
    if clamped != current:
        bound = "min_workers" if clamped > current else "max_workers"
        reason = (
            f"{current} workers is outside [{t.min_workers}, {t.max_workers}]; clamped to {bound}"
        )
        return _change(current, clamped, reason, state)

    notice = ""
    waited = state.waited
    if state.target is not None and observed != state.target:
        if waited < t.max_wait_intervals:
            reason = f"waiting for the pool to reach {state.target} workers (live: {observed})"
            return Decision(current, "hold", reason, PolicyState(state.target, 0, 0, waited + 1))
        if waited == t.max_wait_intervals:
            notice = (
                f"gave up waiting for {state.target} workers after {waited} intervals "
                f"(live: {observed}); deciding on the live workers' load"
            )
            waited += 1
    else:
        waited = 0

    if load is None:
        return Decision(current, "hold", no_load, PolicyState(state.target, 0, 0, waited), notice)

    is_high = load.is_high(t)
    # Scaling down must not bounce straight back up: the load that is left has
    # to fit under the scale-up threshold on one worker fewer.
    projected = load.projected(current - 1) if current > 1 else float("inf")
    is_calm = load.is_calm(t)
    is_low = is_calm and (current <= t.min_workers or load.fits(projected, t))
    high = state.high + 1 if is_high else 0
    low = state.low + 1 if is_low else 0
    kept = PolicyState(state.target, high, low, waited)
    name = load.projected_name

    if is_high:
        if current >= t.max_workers:
            reason = f"high load ({load.describe()}) but already at max_workers={t.max_workers}"
            return Decision(current, "hold", reason, kept, notice)
        if high < t.scale_up_intervals:
            reason = f"high load ({load.describe()}) for {high}/{t.scale_up_intervals} intervals"
            return Decision(current, "hold", reason, kept, notice)
        reason = (
            f"high load for {high} intervals: {load.describe()} (thresholds {load.high_when(t)})"
        )
        return _change(current, current + 1, reason, state, notice)

    if is_low:
        if current <= t.min_workers:
            reason = f"low load ({load.describe()}), already at min_workers={t.min_workers}"
            return Decision(current, "hold", reason, kept, notice)
        if low < t.scale_down_intervals:
            reason = f"low load ({load.describe()}) for {low}/{t.scale_down_intervals} intervals"
            return Decision(current, "hold", reason, kept, notice)
        reason = (
            f"low load for {low} intervals: {load.describe()}, "
            f"projected {name} on {current - 1} workers {projected:.2f}"
        )
        return _change(current, current - 1, reason, state, notice)

    reason = f"load within thresholds ({load.describe()})"
    if is_calm:
        reason = f"low load ({load.describe()}) but {current - 1} workers would reach {name} {projected:.2f}"
    return Decision(current, "hold", reason, kept, notice)


def _change(
    previous: int, replicas: int, reason: str, state: PolicyState, notice: str = ""
) -> Decision:
    direction: Direction = "up" if replicas > previous else "down"
    new_state = replace(state, target=replicas, high=0, low=0, waited=0)
    return Decision(replicas, direction, reason, new_state, notice)
