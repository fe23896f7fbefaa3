"""Waiting for a condition and reading a /metrics page, shared by the tests."""

from __future__ import annotations

import asyncio
import inspect
import time
import urllib.request
from collections.abc import Awaitable, Callable

from prometheus_client.parser import text_string_to_metric_families


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], within: float, what: str
) -> None:
    """Re-check `predicate` (sync or async) until it holds; fail after `within` seconds.

    No fixed sleeps: it returns as soon as the condition holds.
    """
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


def scrape(url: str) -> str:
    """The text of an HTTP page (a service's /metrics)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the series `name` whose labels include `labels` on a /metrics page."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None
