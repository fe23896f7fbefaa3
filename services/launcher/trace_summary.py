"""The figures of one trace replay, live or simulated, and the table both print.

`bench/trace_replay.py` fills a `ReplayResult` from what an OpenAI endpoint
answered; the fleet simulator (`fleet_sim.py`) from its simulated workers.
Same fields, same table, so a live row and a simulated row compare directly.

Columns: TTFT (send to first token), ITL (gap between deliveries that carry
tokens, spread over their tokens), output tok/s and req/s over the wall time
(first send to last answer), `cached` = cached prompt tokens / prompt tokens
(the engines' usage), `late p99` (how far behind its scheduled time a request
was sent) and errors by kind.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """The `q` quantile (0..1) of `values` (nearest rank); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class ReplayResult:
    """What one replay measured."""

    label: str
    sent: int = 0
    ok: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    wall: float = 0.0

    @property
    def num_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def cached_fraction(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def ttft_mean(self) -> float:
        return sum(self.ttft) / len(self.ttft) if self.ttft else float("nan")


def format_table(results: Sequence[ReplayResult]) -> str:
    """One row per result, then one line per kind of error."""
    width = max([12, *(len(r.label) for r in results)])
    header = (
        f"{'mode':<{width}} {'sent':>5} {'ok':>5} {'err':>4} {'req/s':>6} {'out tok/s':>9} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'cached':>7} "
        f"{'late p99':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        wall = max(r.wall, 1e-9)
        lines.append(
            f"{r.label:<{width}} {r.sent:>5} {r.ok:>5} {r.num_errors:>4} {r.ok / wall:>6.2f} "
            f"{r.output_tokens / wall:>9.0f} {percentile(r.ttft, 0.5) * 1e3:>7.0f}ms "
            f"{percentile(r.ttft, 0.99) * 1e3:>7.0f}ms {percentile(r.itl, 0.5) * 1e3:>6.1f}ms "
            f"{percentile(r.itl, 0.99) * 1e3:>6.1f}ms {r.cached_fraction:>7.1%} "
            f"{percentile(r.late, 0.99) * 1e3:>7.0f}ms"
        )
    for r in results:
        for reason, count in sorted(r.errors.items()):
            lines.append(f"  {r.label} errors: {count} x {reason}")
    return "\n".join(lines)
