"""Spacing writes on a connection so that a burst of small messages rides one write."""

from __future__ import annotations

import asyncio


class WritePacer:
    """Lets a writer flush at most once per `min_interval` seconds.

    Every flush of a gRPC stream or a NATS connection costs a syscall and
    tens of microseconds of Python at each end. When messages are produced
    faster than `min_interval` (a fast engine's steps), waiting out the rest
    of the interval lets the next flush carry all of them; when they come
    slower, nothing waits.
    """

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._last = float("-inf")

    async def wait(self) -> None:
        """Sleep until `min_interval` has passed since the last `flushed()`."""
        delay = self._last + self.min_interval - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    def flushed(self) -> None:
        self._last = asyncio.get_running_loop().time()
