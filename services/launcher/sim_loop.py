"""An asyncio event loop on simulated time: when nothing is ready, the clock jumps to the next timer.

The services' own code (the router's wait queue and its timeout, a worker's
load reporter, a write pacer) runs unchanged on it: `asyncio.sleep`,
`asyncio.timeout` and `loop.time()` all read the simulated clock, so an hour
of sleeps costs only the callbacks it schedules. There is no real I/O to
wait for: a loop with nothing ready and no timer pending would wait forever,
so it raises `SimulationStalled` instead. Deterministic: with no I/O, the
order of callbacks depends only on what the code schedules.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class SimulationStalled(RuntimeError):
    """Everything waits for something no timer or callback will ever do."""


class _JumpingSelector(selectors.SelectSelector):
    """A selector whose timeout advances the loop's clock instead of sleeping."""

    def __init__(self, loop: SimulatedTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationStalled("nothing is scheduled and everything waits")
        if timeout > 0:
            self._loop.advance(timeout)
        return []  # no I/O to wait for; the self-pipe only wakes a loop that never blocks


class SimulatedTimeLoop(asyncio.SelectorEventLoop):
    """Owns the simulated clock; `time()` starts at 0 and moves only between callbacks."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def run_simulated(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh simulated-time loop (from synchronous code)."""
    with asyncio.Runner(loop_factory=SimulatedTimeLoop) as runner:
        return runner.run(main)
