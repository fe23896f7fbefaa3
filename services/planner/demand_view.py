"""What the SLA planner sees of a model's demand: the frontends' /metrics, as per-interval figures.

Each sample scrapes every frontend's `/metrics` and takes, for the model, the
growth since the previous sample of four histograms: prompt lengths and
output lengths (one observation per finished request), TTFT and ITL. From
those: requests per second, mean input and output tokens, mean TTFT and ITL
over the interval. Several frontends add up. A frontend that restarted
(counters went down) counts from zero; one that does not answer is left out
of that interval and logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from tandem.runtime.metrics import metric_name

from .sla_policy import Demand, Observed

log = logging.getLogger("tandem.planner.demand")

# The frontend's histograms this reads (declared in the frontend's metrics.py;
# tests/unit/planner/test_demand_view.py checks the names against it).
INPUT_TOKENS = metric_name("frontend", "input_sequence_tokens")
OUTPUT_TOKENS = metric_name("frontend", "output_sequence_tokens")
TTFT = metric_name("frontend", "time_to_first_token_seconds")
ITL = metric_name("frontend", "inter_token_latency_seconds")
_HISTOGRAMS = (INPUT_TOKENS, OUTPUT_TOKENS, TTFT, ITL)

Totals = dict[str, tuple[float, float]]  # histogram -> (count, sum)


def parse_totals(text: str, model: str) -> Totals:
    """(count, sum) of each histogram this reads, for `model`, from a /metrics page."""
    totals: Totals = {}
    for family in text_string_to_metric_families(text):
        if family.name not in _HISTOGRAMS:
            continue
        count = total = 0.0
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                total += sample.value
        totals[family.name] = (count, total)
    return totals


def _growth(now: Totals, before: Totals | None) -> Totals:
    if before is None:
        return {name: (0.0, 0.0) for name in now}
    out = {}
    for name, (count, total) in now.items():
        c0, s0 = before.get(name, (0.0, 0.0))
        out[name] = (count, total) if count < c0 else (count - c0, total - s0)  # a restart
    return out


def observed_from(growth: Totals, seconds: float, last: Demand) -> Observed:
    """The interval's demand and latencies from the histograms' growth over `seconds`.

    Lengths of an interval in which nothing finished are the previous ones (`last`).
    """
    n_in, sum_in = growth.get(INPUT_TOKENS, (0.0, 0.0))
    n_out, sum_out = growth.get(OUTPUT_TOKENS, (0.0, 0.0))
    n_ttft, sum_ttft = growth.get(TTFT, (0.0, 0.0))
    n_itl, sum_itl = growth.get(ITL, (0.0, 0.0))
    demand = Demand(
        request_rate=n_in / seconds if seconds > 0 else 0.0,
        input_tokens=sum_in / n_in if n_in else last.input_tokens,
        output_tokens=sum_out / n_out if n_out else last.output_tokens,
    )
    return Observed(
        demand,
        ttft_ms=sum_ttft / n_ttft * 1000 if n_ttft else None,
        itl_ms=sum_itl / n_itl * 1000 if n_itl else None,
    )


class DemandView:
    """Owns the HTTP session to the frontends and the totals of the previous sample."""

    def __init__(
        self,
        urls: Sequence[str],
        model: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._urls = [u.rstrip("/") + ("" if u.rstrip("/").endswith("/metrics") else "/metrics")
                      for u in urls]  # fmt: skip
        self._model = model
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._previous: dict[str, Totals] = {}
        self._sampled_at: float | None = None
        self._unreachable: set[str] = set()
        self.last = Observed(Demand(0.0, 0.0, 0.0), None, None)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def sample(self) -> Observed | None:
        """The interval since the previous sample; None for the first (it sets the baseline)."""
        now = self._clock()
        first = self._sampled_at is None
        seconds = now - self._sampled_at if self._sampled_at is not None else 0.0
        self._sampled_at = now
        combined: Totals = {}
        for url in self._urls:
            text = await self._scrape(url)
            if text is None:
                continue
            totals = parse_totals(text, self._model)
            growth = _growth(totals, self._previous.get(url))
            self._previous[url] = totals
            for name, (count, total) in growth.items():
                c, s = combined.get(name, (0.0, 0.0))
                combined[name] = (c + count, s + total)
        if first:
            return None
        self.last = observed_from(combined, seconds, self.last.demand)
        return self.last

    async def _scrape(self, url: str) -> str | None:
        assert self._session is not None, "start() first"
        try:
            async with self._session.get(url) as resp:
                resp.raise_for_status()
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if url not in self._unreachable:
                log.warning("frontend metrics unreachable url=%s: %s", url, exc)
                self._unreachable.add(url)
            self._previous.pop(url, None)  # counts again from its next answer
            return None
        if url in self._unreachable:
            log.info("frontend metrics reachable again url=%s", url)
            self._unreachable.discard(url)
        return text
