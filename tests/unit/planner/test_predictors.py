"""Predictors on synthetic series: constant, ramp, daily cycle, bursts."""

from __future__ import annotations

import math
import random

import pytest
from tandem.planner.predictors import PREDICTORS, PredictorSettings, make_predictor


def errors(name: str, series: list[float], **settings: int) -> list[float]:
    """Forecast minus actual, each interval predicted before it is observed."""
    predictor = make_predictor(name, PredictorSettings(**settings))
    out = []
    for value in series:
        out.append(predictor.predict() - value)
        predictor.observe(value)
    return out


def mae(errs: list[float]) -> float:
    return sum(abs(e) for e in errs) / len(errs)


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_a_constant_series_is_predicted_exactly(name: str) -> None:
    assert errors(name, [])[:0] == []
    assert make_predictor(name, PredictorSettings()).predict() == 0.0  # nothing seen yet
    errs = errors(name, [12.5] * 40)
    assert max(abs(e) for e in errs[1:]) < 1e-9


def test_on_a_ramp_holt_winters_follows_the_slope_the_others_lag() -> None:
    slope = 2.0
    ramp = [slope * i for i in range(80)]
    assert mae(errors("constant", ramp)[10:]) == pytest.approx(slope)  # one interval late
    assert mae(errors("moving-average", ramp, window=5)[10:]) == pytest.approx(3 * slope)
    assert mae(errors("holt-winters", ramp)[10:]) < 0.25 * slope


def test_holt_winters_looks_several_intervals_ahead_on_a_ramp() -> None:
    predictor = make_predictor("holt-winters", PredictorSettings())
    for i in range(40):
        predictor.observe(2.0 * i)
    # Next value is 80; three intervals ahead 84 (the trend is damped a little per step).
    assert predictor.predict(1) == pytest.approx(80, abs=1.0)
    assert predictor.predict(3) == pytest.approx(84, abs=1.5)
    constant = make_predictor("constant", PredictorSettings())
    constant.observe(5.0)
    assert constant.predict(3) == constant.predict(1) == 5.0


def test_holt_winters_learns_a_daily_cycle() -> None:
    rng = random.Random(7)
    season = 24  # one interval an hour
    day = [
        100 + 50 * math.sin(2 * math.pi * i / season) + rng.gauss(0, 2) for i in range(8 * season)
    ]
    after_two_days = slice(2 * season, None)
    relative = {
        name: mae(errors(name, day, season=season)[after_two_days]) / 100
        for name in sorted(PREDICTORS)
    }
    assert relative["holt-winters"] < 0.04, relative
    assert relative["constant"] > 0.06, relative  # the cycle is what the others miss
    assert relative["moving-average"] > 0.15, relative


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_a_burst_is_forgotten_within_a_few_intervals(name: str) -> None:
    base, every = 10.0, 15
    burst = [base + (50.0 if i % every == 7 else 0.0) for i in range(6 * every)]
    errs = errors(name, burst)
    for start in range(every + 7, len(burst), every):  # bursts after the first one
        settled = errs[start + 6 : start + every]  # up to the next burst
        assert max(abs(e) for e in settled) < 0.2 * base, (name, start, settled)


def test_an_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown predictor 'arima'"):
        make_predictor("arima", PredictorSettings())
