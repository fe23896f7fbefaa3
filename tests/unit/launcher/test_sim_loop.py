"""The simulated-time event loop: sleeps and timeouts cost no wall time, and a stuck run says so."""

from __future__ import annotations

import asyncio
import time

import pytest
from tandem.launcher.sim_loop import SimulatedTimeLoop, SimulationStalled, run_simulated


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


def test_bare_timers_fire_in_time_order_with_the_loops_own() -> None:
    async def main() -> list[tuple[float, str]]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimulatedTimeLoop)
        fired: list[tuple[float, str]] = []

        def note(name: str) -> None:
            fired.append((round(loop.time(), 9), name))

        def bare(name: str) -> None:
            note(name)
            # What a bare timer schedules runs before any later timer, bare or not.
            loop.call_soon(note, name + " soon")

        for delay, name in [(0.3, "c"), (0.1, "a"), (0.2, "b"), (0.2, "b2")]:
            loop.call_at_bare(delay, lambda n=name: bare(n))
        loop.call_later(0.15, note, "loop")
        await asyncio.sleep(1)
        return fired

    assert run_simulated(main()) == [
        (0.1, "a"), (0.1, "a soon"), (0.15, "loop"),
        (0.2, "b"), (0.2, "b2"), (0.2, "b soon"), (0.2, "b2 soon"),
        (0.3, "c"), (0.3, "c soon"),
    ]  # fmt: skip


def test_a_run_of_bare_timers_alone_ends_at_the_last() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimulatedTimeLoop)
        done = loop.create_future()

        def step(n: int) -> None:  # a worker's step loop: each step schedules the next
            if n:
                loop.call_at_bare(loop.time() + 0.5, lambda: step(n - 1))
            else:
                done.set_result(loop.time())

        step(7200)
        return await done

    assert run_simulated(main()) == 3600.0
