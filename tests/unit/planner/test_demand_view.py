"""The demand view: the frontend's histograms as per-interval rate, lengths and latencies."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from tandem.frontend.metrics import FrontendMetrics
from tandem.planner import demand_view
from tandem.planner.demand_view import observed_from, parse_totals
from tandem.planner.sla_policy import Demand


def _page(metrics: FrontendMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def _serve(metrics: FrontendMetrics, model: str, n: int, isl: int, osl: int) -> None:
    m = metrics.model(model)
    for _ in range(n):
        m.input_tokens.observe(isl)
        m.output_tokens.observe(osl)
        m.ttft.observe(0.2)
        for _ in range(osl):
            m.itl.observe(0.02)


def test_the_names_it_reads_are_the_frontends() -> None:
    page = _page(FrontendMetrics())
    for name in demand_view._HISTOGRAMS:
        assert f"# TYPE {name} histogram" in page, name


def test_an_interval_of_traffic_becomes_rate_lengths_and_latencies() -> None:
    metrics = FrontendMetrics()
    _serve(metrics, "m", 3, isl=100, osl=10)
    _serve(metrics, "other", 50, isl=9999, osl=1)  # another model's traffic is not counted
    before = parse_totals(_page(metrics), "m")
    _serve(metrics, "m", 20, isl=300, osl=40)
    after = parse_totals(_page(metrics), "m")
    observed = observed_from(demand_view._growth(after, before), 10.0, Demand(0, 0, 0))
    assert observed.demand == Demand(request_rate=2.0, input_tokens=300, output_tokens=40)
    assert observed.ttft_ms == pytest.approx(200)
    assert observed.itl_ms == pytest.approx(20)


def test_an_idle_interval_keeps_the_lengths_and_a_restart_counts_from_zero() -> None:
    last = Demand(1.0, 300, 40)
    metrics = FrontendMetrics()
    _serve(metrics, "m", 5, isl=100, osl=10)
    totals = parse_totals(_page(metrics), "m")
    idle = observed_from(demand_view._growth(totals, totals), 5.0, last)
    assert idle.demand == Demand(0.0, 300, 40) and idle.ttft_ms is None and idle.itl_ms is None
    restarted = FrontendMetrics()  # counters below the previous ones: it restarted
    _serve(restarted, "m", 2, isl=50, osl=5)
    growth = demand_view._growth(parse_totals(_page(restarted), "m"), totals)
    assert observed_from(growth, 1.0, last).demand == Demand(2.0, 50, 5)
