"""An asyncio event loop on simulated time: when nothing is ready, the clock jumps to the next timer.

The services' own code (the router's wait queue and its timeout, a worker's
load reporter, a write pacer) runs unchanged on it: `asyncio.sleep`,
`asyncio.timeout` and `loop.time()` all read the simulated clock, so an hour
of sleeps costs only the callbacks it schedules. There is no real I/O to
wait for: a loop with nothing ready and no timer pending would wait forever,
so it raises `SimulationStalled` instead. Deterministic: with no I/O, the
order of callbacks depends only on what the code schedules.

The simulator's own step timers take a cheaper path: `call_at_bare` keeps
(time, callback) on a heap of plain tuples, with no Handle, no context and no
cancel, and the selector runs them when the clock reaches them, in time
order with the loop's own timers.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from collections.abc import Callable, Coroutine, Sized
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
        # Called with the time to the loop's next timer (0 when callbacks are ready).
        loop = self._loop
        bare, ready = loop._bare_timers, loop.ready_callbacks
        deadline = None if timeout is None else loop._now + timeout
        ran = False
        # Bare timers due before the loop's next timer run here, in time order, every one
        # due at an instant together; the loop gets control back (to run what they
        # scheduled, and its own timers due by then) as soon as they schedule anything.
        while bare and (deadline is None or bare[0][0] <= deadline) and not ready:
            when = bare[0][0]
            if when > loop._now:
                loop._now = when
            while bare and bare[0][0] <= when:
                heapq.heappop(bare)[2]()
            ran = True
        if ran:
            return []
        if timeout is None:
            raise SimulationStalled("nothing is scheduled and everything waits")
        if timeout > 0:
            loop.advance(timeout)
        return []  # no I/O to wait for; the self-pipe only wakes a loop that never blocks


class SimulatedTimeLoop(asyncio.SelectorEventLoop):
    """Owns the simulated clock; `time()` starts at 0 and moves only between callbacks."""

    def __init__(self) -> None:
        self._now = 0.0
        # (time, order of scheduling, callback): the order breaks ties first come, first run.
        self._bare_timers: list[tuple[float, int, Callable[[], object]]] = []
        self._bare_order = itertools.count()
        super().__init__(_JumpingSelector(self))
        # The loop's queue of callbacks to run now (asyncio's own; typeshed does not name it).
        self.ready_callbacks: Sized = self._ready  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def call_at_bare(self, when: float, callback: Callable[[], object]) -> None:
        """Run `callback()` when the clock reaches `when`: a timer that cannot be cancelled,
        outside any context, for the simulator's hot paths (one per simulated step).

        An exception it raises ends the run (out of `run_simulated`) rather than reaching
        the loop's exception handler: a simulated worker that breaks stops the simulation.
        """
        heapq.heappush(self._bare_timers, (when, next(self._bare_order), callback))


def run_simulated(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a fresh simulated-time loop (from synchronous code)."""
    with asyncio.Runner(loop_factory=SimulatedTimeLoop) as runner:
        return runner.run(main)
