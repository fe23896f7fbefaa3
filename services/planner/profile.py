"""A worker's measured performance (`tandem profile` writes it, the SLA planner reads it).

The file is JSON (docs/contracts.md, "Worker profile"):

    {"version": 1, "engine": "mocker", "model": "...", "created_at": 1.7e9,
     "settings": {...what the profiled worker ran with...},
     "prefill": [{"input_tokens", "concurrency", "ttft_ms", "tokens_per_s"}, ...],
     "decode":  [{"batch_size", "context_tokens", "itl_ms", "tokens_per_s"}, ...]}

`prefill` is TTFT against input length and load (that many prompts arriving
together); `decode` is ITL against batch size and context length. Between the
measured points values are interpolated linearly, beyond the largest ones
extrapolated from the last two, below the smallest held at the first.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROFILE_VERSION = 1


@dataclass(frozen=True, slots=True)
class PrefillPoint:
    """`concurrency` prompts of `input_tokens` each arriving together: their mean TTFT
    and the prompt tokens per second the worker got through."""

    input_tokens: int
    concurrency: int
    ttft_ms: float
    tokens_per_s: float


@dataclass(frozen=True, slots=True)
class DecodePoint:
    """`batch_size` requests decoding together at `context_tokens` each: their mean ITL
    and the output tokens per second of the worker."""

    batch_size: int
    context_tokens: int
    itl_ms: float
    tokens_per_s: float


def _interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise linear through (xs, ys), xs ascending; linear beyond the last, flat before the first."""
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    i = bisect.bisect_left(xs, x)
    if i >= len(xs):
        i = len(xs) - 1
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _grid(
    rows: Sequence[tuple[float, float, float]],
) -> list[tuple[float, list[float], list[float]]]:
    """(outer, inner, value) rows -> per outer value, its inner axis and values, both sorted."""
    groups: dict[float, list[tuple[float, float]]] = {}
    for outer, inner, value in rows:
        groups.setdefault(outer, []).append((inner, value))
    out = []
    for outer in sorted(groups):
        pairs = sorted(groups[outer])
        out.append((outer, [p[0] for p in pairs], [p[1] for p in pairs]))
    return out


def _bilinear(
    grid: list[tuple[float, list[float], list[float]]], outer: float, inner: float
) -> float:
    outers = [g[0] for g in grid]
    values = [_interp(xs, ys, inner) for _, xs, ys in grid]
    return _interp(outers, values, outer)


def _largest_within(xs: Sequence[float], ys: Sequence[float], limit: float) -> float | None:
    """The largest x (ys rising with x) where the curve through (xs, ys) stays <= limit.

    None when even the first point is above it; past the last point the curve is
    extrapolated no further than twice the largest measured x.
    """
    if ys[0] > limit:
        return None
    best = xs[0]
    for i in range(1, len(xs)):
        if ys[i] <= limit:
            best = xs[i]
            continue
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return x0 + (x1 - x0) * (limit - y0) / (y1 - y0) if y1 > y0 else x0
    if len(xs) >= 2 and ys[-1] > ys[-2]:
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return min(xs[-1] + (limit - ys[-1]) / slope, 2 * xs[-1])
    return best


@dataclass(frozen=True)
class WorkerProfile:
    """One worker's TTFT and ITL surfaces, and what it sustains within given targets."""

    engine: str
    model: str
    prefill: tuple[PrefillPoint, ...]
    decode: tuple[DecodePoint, ...]
    created_at: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prefill or not self.decode:
            raise ValueError("a profile needs at least one prefill and one decode point")
        for p in self.prefill:
            if p.input_tokens <= 0 or p.concurrency <= 0 or p.ttft_ms <= 0 or p.tokens_per_s <= 0:
                raise ValueError(f"prefill point out of range: {p}")
        for d in self.decode:
            if d.batch_size <= 0 or d.context_tokens <= 0 or d.itl_ms <= 0 or d.tokens_per_s <= 0:
                raise ValueError(f"decode point out of range: {d}")

    # -- the surfaces -------------------------------------------------------------

    def ttft_ms(self, input_tokens: float, concurrency: float = 1.0) -> float:
        """Mean TTFT of `concurrency` prompts of `input_tokens` arriving together."""
        rows = [(p.input_tokens, p.concurrency, p.ttft_ms) for p in self.prefill]
        return _bilinear(_grid(rows), input_tokens, concurrency)

    def itl_ms(self, batch_size: float, context_tokens: float) -> float:
        """Mean ITL with `batch_size` requests of `context_tokens` decoding together."""
        rows = [(d.context_tokens, d.batch_size, d.itl_ms) for d in self.decode]
        return _bilinear(_grid(rows), context_tokens, batch_size)

    # -- capacity within targets -------------------------------------------------

    def prefill_capacity(self, input_tokens: float, ttft_target_ms: float) -> float:
        """Prompt tokens/s one worker gets through with TTFT within the target.

        Per measured input length: the highest load whose TTFT meets the target
        and the throughput there; then interpolated in input length. A length
        whose single prompt misses the target counts its one-prompt throughput
        (the best the worker can do).
        """
        grid_ttft = _grid([(p.input_tokens, p.concurrency, p.ttft_ms) for p in self.prefill])
        grid_tput = _grid([(p.input_tokens, p.concurrency, p.tokens_per_s) for p in self.prefill])
        lengths, capacities = [], []
        for (length, conc, ttfts), (_, _, tputs) in zip(grid_ttft, grid_tput, strict=True):
            c = _largest_within(conc, ttfts, ttft_target_ms)
            capacities.append(_interp(conc, tputs, c if c is not None else conc[0]))
            lengths.append(length)
        return max(_interp(lengths, capacities, input_tokens), 1e-9)

    def decode_capacity(self, context_tokens: float, itl_target_ms: float) -> float:
        """Output tokens/s one worker sustains with ITL within the target at this context."""
        grid = _grid([(d.context_tokens, d.batch_size, d.itl_ms) for d in self.decode])
        contexts, capacities = [], []
        for context, batches, itls in grid:
            b = _largest_within(batches, itls, itl_target_ms)
            b = b if b is not None else batches[0]
            capacities.append(b / _interp(batches, itls, b) * 1000.0)
            contexts.append(context)
        return max(_interp(contexts, capacities, context_tokens), 1e-9)

    def batch_at(self, tokens_per_s: float, context_tokens: float) -> float:
        """The decode batch at which one worker produces `tokens_per_s` (the profile's operating point)."""
        # Inverted on the same curve decode_capacity reads (batch / interpolated ITL), by bisection.
        low = float(min(d.batch_size for d in self.decode))
        high = 2.0 * max(d.batch_size for d in self.decode)

        def rate(batch: float) -> float:
            return batch / self.itl_ms(batch, context_tokens) * 1000.0

        if rate(low) >= tokens_per_s:
            return low
        if rate(high) <= tokens_per_s:
            return high
        for _ in range(50):
            mid = (low + high) / 2
            low, high = (mid, high) if rate(mid) < tokens_per_s else (low, mid)
        return (low + high) / 2

    def concurrency_at(self, tokens_per_s: float, input_tokens: float) -> float:
        """The prefill load at which one worker gets through `tokens_per_s` prompt tokens."""
        grid = _grid([(p.input_tokens, p.concurrency, p.tokens_per_s) for p in self.prefill])
        loads = [_largest_within(xs, ys, tokens_per_s) or xs[0] for _, xs, ys in grid]
        return _interp([g[0] for g in grid], loads, input_tokens)

    # -- the file -------------------------------------------------------------------

    def to_json(self) -> str:
        body = {
            "version": PROFILE_VERSION,
            "engine": self.engine,
            "model": self.model,
            "created_at": self.created_at,
            "settings": self.settings,
            "prefill": [asdict(p) for p in self.prefill],
            "decode": [asdict(d) for d in self.decode],
        }
        return json.dumps(body, indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_json(cls, raw: str) -> WorkerProfile:
        """Parse a profile; ValueError saying what is wrong with anything else."""
        try:
            data = json.loads(raw)
            version = data.get("version")
            if version != PROFILE_VERSION:
                raise ValueError(
                    f"profile version {version!r}, this planner reads {PROFILE_VERSION}"
                )
            return cls(
                engine=str(data["engine"]),
                model=str(data["model"]),
                created_at=float(data.get("created_at", 0.0)),
                settings=dict(data.get("settings") or {}),
                prefill=tuple(PrefillPoint(**p) for p in data["prefill"]),
                decode=tuple(DecodePoint(**d) for d in data["decode"]),
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a worker profile: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> WorkerProfile:
        try:
            raw = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read profile {path}: {exc.strerror or exc}") from None
        try:
            return cls.from_json(raw)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
