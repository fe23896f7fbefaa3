"""Whether copying a block up from a lower tier beats recomputing it, learned from measurement.

Both sides are measured on the running worker, never set by flags:
- a tier's copy: the mean time one block's onboard copy took (the copier's own time per op,
  queueing not included: the links are duplex and onboards go first, so what an onboard
  queues behind is other onboards);
- recomputing: the engine's prefill seconds per token, the slope of step time against
  prefill tokens over recent prefill steps (a step's fixed cost is paid either way: the
  request's last block is always computed). Where recent steps prefilled too alike a number
  of tokens to fit a slope, step time / tokens stands in, which overstates the cost and so
  leans towards copying.

A block is onboarded from a tier when its copy is expected to take no longer than
`ONBOARD_MARGIN` x recomputing it; until both sides are measured, the tier is trusted.

The request's own wait is what is compared. Recomputing also lengthens the step for every
other sequence in it, which a copy up does not; weighing that (recompute time x sequences a
step) was measured on the mocker (bench/kvbm.py, 2 workers at speedup 0.5, host 0.5x and
disk 2x of the working set, disk reads 26 us a token against 20 us to recompute one): it
onboarded from the disk and served 1.39x KVBM off's throughput against 1.06x, but TTFT p50
was 1.86x off's against 1.66x, the disk then being saturated (0.54 s mean read). TTFT is
the target, so the plain comparison stays.
"""

from __future__ import annotations

ONBOARD_MARGIN = 1.0
"""Copy time allowed per unit of recompute time. 1: the request's own wait is compared, and a
tie goes to the copy (it also spares the other sequences in the step the recomputation)."""

COPY_EMA = 0.1
"""Weight of the newest onboard copy in a tier's mean copy time."""

PREFILL_EMA = 0.05
"""Weight of the newest prefill step in the step-time fit (about the last 20 steps)."""

_MIN_SPREAD = 0.05
"""The fit needs the steps' token counts to spread by this share of their mean (stddev)."""


class OnboardCost:
    """Owns the copy-time means per tier and the prefill step-time fit; decides per tier."""

    def __init__(self, block_size: int, margin: float = ONBOARD_MARGIN) -> None:
        if block_size <= 0 or margin <= 0:
            raise ValueError("block size and margin must be positive")
        self.block_size = block_size
        self.margin = margin
        self._copy: dict[str, float] = {}
        self._steps = 0
        # Exponential means of tokens, seconds, tokens^2 and tokens x seconds.
        self._n = self._s = self._nn = self._ns = 0.0

    def copied(self, tier: str, seconds: float) -> None:
        """One block came up from `tier` in `seconds` (the copy's own time)."""
        mean = self._copy.get(tier)
        self._copy[tier] = seconds if mean is None else mean + COPY_EMA * (seconds - mean)

    def prefilled(self, num_tokens: int, seconds: float) -> None:
        """An engine step that prefilled `num_tokens` tokens took `seconds`."""
        if num_tokens <= 0 or seconds <= 0:
            return
        a = PREFILL_EMA if self._steps else 1.0
        self._steps += 1
        self._n += a * (num_tokens - self._n)
        self._s += a * (seconds - self._s)
        self._nn += a * (num_tokens * num_tokens - self._nn)
        self._ns += a * (num_tokens * seconds - self._ns)

    def copy_seconds(self, tier: str) -> float | None:
        """A block's mean copy time from `tier`; None until one was copied."""
        return self._copy.get(tier)

    @property
    def prefill_token_seconds(self) -> float | None:
        """Recomputing one token, as recent prefill steps show; None until one ran."""
        if not self._steps:
            return None
        average = self._s / self._n
        var = self._nn - self._n * self._n
        if var <= (_MIN_SPREAD * self._n) ** 2:
            return average
        slope = (self._ns - self._n * self._s) / var
        # Steps have a fixed cost >= 0, so the slope is at most the average; a slope <= 0 is
        # noise (other work in the steps), not free prefill.
        return min(slope, average) if slope > 0 else average

    def worth_onboarding(self, tier: str) -> bool:
        """Copying a block up from `tier` is expected to be no slower than recomputing it."""
        copy = self._copy.get(tier)
        token = self.prefill_token_seconds
        if copy is None or token is None:
            return True
        return copy <= self.margin * token * self.block_size
