"""`tandem router tune`: search the kv router's knobs for a trace, on the fleet simulator.

Coordinate descent over `kv_overlap_score_weight`, `router_temperature` and
`busy_threshold` (the values of `SEARCH_SPACE`, plus the starting ones):
starting from the given settings (the defaults unless flags say otherwise),
each knob in turn takes the value that simulates best with the others held,
for up to `--passes` rounds or until a round changes nothing. Settings are
compared by errors, then by the objective (a TTFT statistic); a setting is
simulated once. The defaults are simulated first, so the result is never
worse than them on the objective, on this trace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tandem.router.config import RoutingConfig
from tandem.runtime.config import flag_name, option

from .fleet_config import FleetConfig, SimulateConfig
from .fleet_sim import simulate
from .mooncake_trace import TraceRecord
from .trace_summary import ReplayResult, percentile

SEARCH_SPACE: dict[str, tuple[float, ...]] = {
    "kv_overlap_score_weight": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    "router_temperature": (0.0, 0.02, 0.05, 0.1, 0.25),
    "busy_threshold": (0.5, 0.7, 0.85, 0.95, 1.0),
}
"""Values tried per knob (a busy threshold of 1.0: busy only when the KV pool is full)."""

OBJECTIVES: dict[str, Callable[[ReplayResult], float]] = {
    "ttft_mean": lambda r: r.ttft_mean,
    "ttft_p50": lambda r: percentile(r.ttft, 0.5),
    "ttft_p99": lambda r: percentile(r.ttft, 0.99),
}


@dataclass(frozen=True, kw_only=True)
class TuneConfig(SimulateConfig):
    """tandem router tune: find kv router settings for a trace on the fleet simulator.

    Coordinate descent over --kv-overlap-score-weight, --router-temperature and
    --busy-threshold, each setting simulated on the trace (`tandem simulate`);
    prints the best settings next to the starting ones (the defaults unless
    given), with their predicted TTFT and hit rate, and the flags to use them.
    """

    objective: str = option(
        "ttft_mean", "What the search minimises (after errors).", choices=tuple(OBJECTIVES)
    )
    passes: int = option(
        2, "Most rounds over the three knobs (a round that changes nothing ends it)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.routing.router_mode != "kv":
            raise ValueError("router tune searches the kv router's knobs: --router-mode kv")
        if self.passes <= 0:
            raise ValueError("passes must be positive")


@dataclass(frozen=True)
class Trial:
    """One setting simulated, and how it scored (lower is better)."""

    routing: RoutingConfig
    result: ReplayResult
    score: tuple[int, float]


@dataclass(frozen=True)
class TuneResult:
    """The starting setting, the best one found and every setting simulated, in order."""

    start: Trial
    best: Trial
    trials: list[Trial]


def _key(routing: RoutingConfig) -> tuple[float, ...]:
    return tuple(getattr(routing, knob) for knob in SEARCH_SPACE)


def tune(
    records: Sequence[TraceRecord],
    config: FleetConfig,
    objective: str = "ttft_mean",
    passes: int = 2,
    on_trial: Callable[[Trial], None] | None = None,
) -> TuneResult:
    """Coordinate descent from `config.routing` over SEARCH_SPACE on `records`."""
    measure = OBJECTIVES[objective]
    trials: dict[tuple[float, ...], Trial] = {}

    def evaluate(routing: RoutingConfig) -> Trial:
        key = _key(routing)
        if key not in trials:
            result = simulate(records, dataclasses.replace(config, routing=routing))
            trials[key] = Trial(routing, result, (result.num_errors, measure(result)))
            if on_trial is not None:
                on_trial(trials[key])
        return trials[key]

    start = best = evaluate(config.routing)
    for _ in range(passes):
        before = best
        for knob, values in SEARCH_SPACE.items():
            for value in values:
                trial = evaluate(dataclasses.replace(best.routing, **{knob: value}))
                if trial.score < best.score:
                    best = trial
        if best is before:
            break
    return TuneResult(start, best, list(trials.values()))


def knob_flags(routing: RoutingConfig) -> str:
    """The flags that set the searched knobs to `routing`'s values (frontend and `tandem up`)."""
    fields = {f.name: f for f in dataclasses.fields(RoutingConfig)}
    return " ".join(f"{flag_name(fields[k])} {getattr(routing, k):g}" for k in SEARCH_SPACE)


def format_trials(rows: Sequence[tuple[str, Trial]]) -> str:
    """One line per labelled trial: the knobs, predicted TTFT, hit rate and errors."""
    header = (
        f"{'settings':<8} {'overlap weight':>15} {'temperature':>12} {'busy threshold':>15} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'TTFT mean':>10} {'cached':>7} {'err':>4}"
    )
    lines = [header, "-" * len(header)]
    for label, trial in rows:
        r, k = trial.result, trial.routing
        lines.append(
            f"{label:<8} {k.kv_overlap_score_weight:>15g} {k.router_temperature:>12g} "
            f"{k.busy_threshold:>15g} {percentile(r.ttft, 0.5) * 1e3:>7.0f}ms "
            f"{percentile(r.ttft, 0.99) * 1e3:>7.0f}ms {r.ttft_mean * 1e3:>8.0f}ms "
            f"{r.cached_fraction:>7.1%} {r.num_errors:>4}"
        )
    return "\n".join(lines)
