"""The simulated-time event loop: sleeps and timeouts cost no wall time, and a stuck run says so."""

from __future__ import annotations

import asyncio
import time

import pytest
from tandem.launcher.sim_loop import SimulationStalled, run_simulated


def test_an_hour_of_sleeps_and_timeouts_takes_no_wall_time() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)
        slept = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.Event().wait()
        return slept, loop.time()

    started = time.perf_counter()
    assert run_simulated(main()) == (3600.0, 3630.0)
    assert time.perf_counter() - started < 5.0


def test_timers_fire_in_time_order() -> None:
    async def main() -> list[tuple[float, str]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[float, str]] = []
        for delay, name in [(0.3, "c"), (0.1, "a"), (0.2, "b")]:
            loop.call_later(delay, lambda n=name: fired.append((round(loop.time(), 9), n)))
        await asyncio.sleep(1)
        return fired

    assert run_simulated(main()) == [(0.1, "a"), (0.2, "b"), (0.3, "c")]


def test_waiting_for_what_never_happens_raises() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(SimulationStalled):
        run_simulated(main())
