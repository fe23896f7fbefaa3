"""Forecasts of the next adjustment interval's value of one series (request rate, input or output length).

The SLA planner keeps one predictor per series, feeds it each interval's
observation and sizes the pool for `predict()`: the value it expects over the
interval to come, so the pool grows before a ramp arrives instead of after.
`--predictor` picks the kind by name (`PREDICTORS`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PredictorSettings:
    """What the predictors take from the planner's flags."""

    window: int = 5
    """Intervals the moving average spans."""
    season: int = 0
    """Intervals in one season (a daily cycle) for holt-winters; 0 = trend only."""


class BasePredictor(ABC):
    """Owns the history of one series. No observation yet: `predict()` is 0."""

    @abstractmethod
    def observe(self, value: float) -> None:
        """The value seen over the interval that just ended."""

    @abstractmethod
    def predict(self, steps: int = 1) -> float:
        """The value expected `steps` intervals from now (1: the next one; never negative)."""


class ConstantPredictor(BasePredictor):
    """The next interval looks like the last one."""

    def __init__(self, settings: PredictorSettings) -> None:
        self._last = 0.0

    def observe(self, value: float) -> None:
        self._last = value

    def predict(self, steps: int = 1) -> float:
        return max(self._last, 0.0)


class MovingAveragePredictor(BasePredictor):
    """The mean of the last `window` intervals: steady under noise, late on a ramp."""

    def __init__(self, settings: PredictorSettings) -> None:
        self._values: deque[float] = deque(maxlen=max(1, settings.window))

    def observe(self, value: float) -> None:
        self._values.append(value)

    def predict(self, steps: int = 1) -> float:
        return max(sum(self._values) / len(self._values), 0.0) if self._values else 0.0


class HoltWintersPredictor(BasePredictor):
    """Additive Holt-Winters: level, trend and (with `season` > 0) a seasonal term.

    Level and trend follow a ramp without lag; the seasonal term learns a
    repeating cycle (a day of traffic in `season` intervals) after one full
    season. The trend is damped, so a single burst does not send the forecast
    off on a slope long after it ended.
    """

    ALPHA = 0.5  # weight of a new observation in the level
    BETA = 0.2  # weight of a new slope in the trend
    GAMMA = 0.3  # weight of a new seasonal deviation
    PHI = 0.98  # trend damping per interval

    def __init__(self, settings: PredictorSettings) -> None:
        self._season = max(0, settings.season)
        self._level: float | None = None
        self._trend = 0.0
        self._seasonal = [0.0] * self._season
        self._history: list[float] = []  # the first season, to seed the seasonal terms
        self._t = 0  # observations seen

    def observe(self, value: float) -> None:
        m = self._season
        if m and self._t < m:  # first season: learn its shape before forecasting with it
            self._history.append(value)
            self._t += 1
            self._level_only(value)
            if self._t == m:
                mean = sum(self._history) / m
                self._seasonal = [v - mean for v in self._history]
                self._level = mean
                self._trend = 0.0
            return
        if self._level is None:
            self._level = value
            self._t += 1
            return
        s = self._seasonal[self._t % m] if m else 0.0
        last_level = self._level
        self._level = self.ALPHA * (value - s) + (1 - self.ALPHA) * (
            last_level + self.PHI * self._trend
        )
        self._trend = self.BETA * (self._level - last_level) + (1 - self.BETA) * self.PHI * (
            self._trend
        )
        if m:
            self._seasonal[self._t % m] = self.GAMMA * (value - self._level) + (1 - self.GAMMA) * s
        self._t += 1

    def _level_only(self, value: float) -> None:
        # Before the first season is complete: Holt without a seasonal term.
        if self._level is None:
            self._level = value
            return
        last_level = self._level
        self._level = self.ALPHA * value + (1 - self.ALPHA) * (last_level + self.PHI * self._trend)
        self._trend = self.BETA * (self._level - last_level) + (1 - self.BETA) * self.PHI * (
            self._trend
        )

    def predict(self, steps: int = 1) -> float:
        if self._level is None:
            return 0.0
        m = self._season
        s = self._seasonal[(self._t + steps - 1) % m] if m and self._t >= m else 0.0
        damped = sum(self.PHI**i for i in range(1, max(steps, 1) + 1))
        return max(self._level + damped * self._trend + s, 0.0)


PREDICTORS: dict[str, Callable[[PredictorSettings], BasePredictor]] = {
    "constant": ConstantPredictor,
    "moving-average": MovingAveragePredictor,
    "holt-winters": HoltWintersPredictor,
}


def make_predictor(name: str, settings: PredictorSettings) -> BasePredictor:
    try:
        return PREDICTORS[name](settings)
    except KeyError:
        raise ValueError(f"unknown predictor {name!r}; choose from {sorted(PREDICTORS)}") from None
