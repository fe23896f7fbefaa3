"""The load policy for a disaggregated model: its prefill and decode pools, each on its own load.

The decode pool is judged as an aggregated one is (`policy.decide`: KV usage
and waiting requests of its workers); the prefill pool on the prefill queue
(`policy.decide_prefill`: jobs queued or running per prefill worker). Both
stay within the total `--max-workers`: a pool that would grow past it holds,
ready to grow as soon as the other pool leaves room. Pure, like `policy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .policy import Decision, PolicyState, Thresholds, WorkerLoad, decide, decide_prefill

POOLS = ("prefill", "decode")


@dataclass(frozen=True, slots=True)
class PoolThresholds:
    """Each pool's thresholds (its own bounds) and the budget both share."""

    prefill: Thresholds
    decode: Thresholds
    max_workers: int

    def of(self, pool: str) -> Thresholds:
        return self.prefill if pool == "prefill" else self.decode


@dataclass(frozen=True, slots=True)
class PoolsDecision:
    """Each pool's decision (its state is the one to pass on), and the pools' sizes."""

    decisions: dict[str, Decision]

    @property
    def targets(self) -> dict[str, int]:
        return {pool: d.replicas for pool, d in self.decisions.items()}

    @property
    def states(self) -> dict[str, PolicyState]:
        return {pool: d.state for pool, d in self.decisions.items()}

    @property
    def changed(self) -> bool:
        return any(d.direction != "hold" for d in self.decisions.values())

    @property
    def reason(self) -> str:
        return "; ".join(f"{pool} {d.direction}: {d.reason}" for pool, d in self.decisions.items())


def decide_pools(
    live: Mapping[str, int],
    loads: Mapping[str, Sequence[WorkerLoad]],
    prefill_depth: int | None,
    t: PoolThresholds,
    states: Mapping[str, PolicyState],
) -> PoolsDecision:
    """One interval's decision for both pools.

    `live` counts the live (not draining) workers per role, `loads` holds the
    recent reports per role, `prefill_depth` the model's prefill queue (None:
    unreadable, the prefill pool holds).
    """
    decode_state = states.get("decode", PolicyState())
    prefill_state = states.get("prefill", PolicyState())
    decisions = {
        "prefill": decide_prefill(live.get("prefill", 0), prefill_depth, t.prefill, prefill_state),
        "decode": decide(live.get("decode", 0), loads.get("decode", ()), t.decode, decode_state),
    }
    previous = {
        "prefill": _current(prefill_state, live.get("prefill", 0)),
        "decode": _current(decode_state, live.get("decode", 0)),
    }
    # Growth past the budget is refused, prefill's first: a full decode pool
    # stalls every stream, a full prefill pool only sends prompts to decode.
    for pool in POOLS:
        total = sum(d.replicas for d in decisions.values())
        d = decisions[pool]
        if total <= t.max_workers or d.direction != "up":
            continue
        before = states.get(pool, PolicyState())
        # Still high next interval, it grows then if the other pool has made room.
        held = replace(d.state, target=before.target, high=t.of(pool).scale_up_intervals - 1)
        decisions[pool] = Decision(
            previous[pool],
            "hold",
            f"{d.reason}, but prefill and decode are at --max-workers={t.max_workers}",
            held,
            d.notice,
        )
    return PoolsDecision(decisions)


def _current(state: PolicyState, live: int) -> int:
    return state.target if state.target is not None else live
