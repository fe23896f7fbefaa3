"""The SLA scaling policy: replicas per pool from predicted demand, the worker profile and latency targets.

A pure function, like the load policy: the service feeds it what it saw and
predicted each interval and keeps the returned `SlaState`.

    prefill need = predicted rate x input tokens  / prompt tokens/s one worker gets through within TTFT
    decode need  = predicted rate x output tokens / output tokens/s one worker sustains within ITL

Capacities come from the profile, looked up at the targets divided by a
correction: observed over expected latency, where expected is what the
profile says the live pool should show at the load it carried. A fleet that
runs slower than its profile (interference, another machine) thus gets more
workers, one that runs faster fewer. An aggregated pool runs both phases on
each worker and needs their sum; prefill and decode pools (workers with
those roles) each need their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from .profile import WorkerProfile

PoolName = Literal["aggregated", "prefill", "decode"]
CORRECTION_BOUNDS = (0.5, 4.0)  # one noisy interval must not size the pool by 10x
CORRECTION_WEIGHT = 0.5  # of a new interval's ratio in the running correction


@dataclass(frozen=True, slots=True)
class Demand:
    """Requests per second and their mean input and output lengths, over one interval."""

    request_rate: float
    input_tokens: float
    output_tokens: float

    def describe(self) -> str:
        return (
            f"rate={self.request_rate:.2f}/s isl={self.input_tokens:.0f} "
            f"osl={self.output_tokens:.0f}"
        )


@dataclass(frozen=True, slots=True)
class Observed:
    """What the last interval showed: its demand and mean latencies (None: nothing finished)."""

    demand: Demand
    ttft_ms: float | None
    itl_ms: float | None


@dataclass(frozen=True, slots=True)
class SlaBounds:
    """Targets and pool bounds; validated by `PlannerConfig`, which builds it."""

    ttft_ms: float = 500.0
    itl_ms: float = 50.0
    min_workers: int = 1
    max_workers: int = 8
    min_prefill_workers: int = 1
    max_prefill_workers: int = 8
    min_decode_workers: int = 1
    max_decode_workers: int = 8
    scale_down_intervals: int = 3

    def pool_bounds(self, pool: str) -> tuple[int, int]:
        if pool == "prefill":
            return self.min_prefill_workers, self.max_prefill_workers
        if pool == "decode":
            return self.min_decode_workers, self.max_decode_workers
        return self.min_workers, self.max_workers


@dataclass(frozen=True, slots=True)
class SlaState:
    """What the policy remembers: last targets, running corrections, intervals of lower need."""

    targets: dict[str, int] = field(default_factory=dict)
    ttft_correction: float = 1.0
    itl_correction: float = 1.0
    lower: dict[str, tuple[int, ...]] = field(default_factory=dict)  # wanted sizes while below


@dataclass(frozen=True, slots=True)
class SlaDecision:
    """Per pool the size to ask for, with every input that led to it (logged and exported)."""

    targets: dict[str, int]
    changed: bool
    reason: str
    state: SlaState
    predicted: Demand
    prefill_capacity: float  # prompt tokens/s per worker within the (corrected) TTFT target
    decode_capacity: float  # output tokens/s per worker within the (corrected) ITL target
    expected_ttft_ms: float | None
    expected_itl_ms: float | None
    wanted: dict[str, int]  # before bounds and hysteresis


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return max(bounds[0], min(bounds[1], value))


def _context(demand: Demand) -> float:
    # Mean context over a request's decode: its prompt plus half its output.
    return max(demand.input_tokens + demand.output_tokens / 2, 1.0)


def expected_latencies(
    profile: WorkerProfile, demand: Demand, prefill_workers: int, decode_workers: int
) -> tuple[float, float]:
    """(TTFT, ITL) in ms the profile predicts when `demand` is spread over the live workers."""
    prefill_rate = demand.request_rate * demand.input_tokens / max(prefill_workers, 1)
    decode_rate = demand.request_rate * demand.output_tokens / max(decode_workers, 1)
    load = profile.concurrency_at(prefill_rate, demand.input_tokens)
    batch = profile.batch_at(decode_rate, _context(demand))
    return (
        profile.ttft_ms(demand.input_tokens, load),
        profile.itl_ms(batch, _context(demand)),
    )


def _corrected(previous: float, observed: float | None, expected: float | None) -> float:
    if observed is None or expected is None or expected <= 0:
        return previous
    ratio = _clamp(observed / expected, CORRECTION_BOUNDS)
    return _clamp(CORRECTION_WEIGHT * ratio + (1 - CORRECTION_WEIGHT) * previous, CORRECTION_BOUNDS)


def decide_sla(
    profile: WorkerProfile,
    bounds: SlaBounds,
    predicted: Demand,
    observed: Observed,
    live: dict[str, int],
    state: SlaState,
) -> SlaDecision:
    """One interval's targets.

    `live` counts the live workers per role; it has "prefill" or "decode" keys
    when the model is served disaggregated, else only "aggregated".
    """
    disaggregated = bool(live.get("prefill") or live.get("decode"))
    pools: tuple[PoolName, ...] = ("prefill", "decode") if disaggregated else ("aggregated",)
    n_prefill = live.get("prefill", 0) if disaggregated else live.get("aggregated", 0)
    n_decode = live.get("decode", 0) if disaggregated else live.get("aggregated", 0)

    expected_ttft = expected_itl = None
    if observed.demand.request_rate > 0 and n_prefill and n_decode:
        expected_ttft, expected_itl = expected_latencies(
            profile, observed.demand, n_prefill, n_decode
        )
    ttft_corr = _corrected(state.ttft_correction, observed.ttft_ms, expected_ttft)
    itl_corr = _corrected(state.itl_correction, observed.itl_ms, expected_itl)

    prefill_cap = profile.prefill_capacity(predicted.input_tokens, bounds.ttft_ms / ttft_corr)
    decode_cap = profile.decode_capacity(_context(predicted), bounds.itl_ms / itl_corr)
    prefill_need = predicted.request_rate * predicted.input_tokens / prefill_cap
    decode_need = predicted.request_rate * predicted.output_tokens / decode_cap
    needs = (
        {"prefill": prefill_need, "decode": decode_need}
        if disaggregated
        else {"aggregated": prefill_need + decode_need}
    )
    # 1e-6: a need of exactly 2.0 workers computed as 2.0000000001 is 2.
    wanted: dict[str, int] = {pool: max(1, math.ceil(needs[pool] - 1e-6)) for pool in pools}
    bounded: dict[str, int] = {
        pool: int(_clamp(wanted[pool], bounds.pool_bounds(pool))) for pool in pools
    }
    if disaggregated:
        bounded = _within_budget(bounded, bounds)

    targets: dict[str, int] = {}
    lower: dict[str, tuple[int, ...]] = {}
    notes = []
    for pool in pools:
        current = state.targets.get(pool, live.get(pool, 0))
        want = bounded[pool]
        if want >= current or current == 0:
            targets[pool] = want
            continue
        seen = (*state.lower.get(pool, ()), want)  # hysteresis: only a lasting drop shrinks
        starting = current - live.get(pool, 0)
        if starting > 0 and len(seen) < 3 * bounds.scale_down_intervals:
            # Workers asked for are still starting: stopping them now wastes their start (and
            # the demand that asked for them may be back by the time they serve). A worker
            # that never comes is given up on after three hysteresis windows.
            targets[pool] = current
            lower[pool] = seen
            notes.append(f"{pool} wants {want}, {starting} still starting")
            continue
        if len(seen) >= bounds.scale_down_intervals:
            targets[pool] = max(seen)
        else:
            targets[pool] = current
            lower[pool] = seen
            notes.append(f"{pool} wants {want} for {len(seen)}/{bounds.scale_down_intervals}")

    previous = {pool: state.targets.get(pool, live.get(pool, 0)) for pool in pools}
    changed = targets != previous
    needs_text = " ".join(f"{pool}_need={needs[pool]:.2f}" for pool in pools)
    reason = (
        f"sla predicted {predicted.describe()} {needs_text} "
        f"prefill_capacity={prefill_cap:.0f}tok/s decode_capacity={decode_cap:.0f}tok/s "
        f"ttft_correction={ttft_corr:.2f} itl_correction={itl_corr:.2f}"
    )
    if notes:
        reason += " (" + "; ".join(notes) + ")"
    new_state = replace(
        state, targets=targets, ttft_correction=ttft_corr, itl_correction=itl_corr, lower=lower
    )
    return SlaDecision(
        targets=targets,
        changed=changed,
        reason=reason,
        state=new_state,
        predicted=predicted,
        prefill_capacity=prefill_cap,
        decode_capacity=decode_cap,
        expected_ttft_ms=expected_ttft,
        expected_itl_ms=expected_itl,
        wanted=wanted,
    )


def _within_budget(sizes: dict[str, int], bounds: SlaBounds) -> dict[str, int]:
    """Prefill plus decode within --max-workers: both shrunk in proportion, each to its minimum at least."""
    total = sum(sizes.values())
    if total <= bounds.max_workers:
        return sizes
    scale = bounds.max_workers / total
    out = {
        pool: max(bounds.pool_bounds(pool)[0], math.floor(n * scale)) for pool, n in sizes.items()
    }
    # Hand what flooring left back to the pool that lost most.
    while sum(out.values()) < bounds.max_workers:
        pool = max(out, key=lambda p: sizes[p] - out[p])
        if sizes[pool] - out[pool] <= 0:
            break
        out[pool] += 1
    return out
