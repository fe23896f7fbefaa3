"""Supervise a set of child processes: restart the ones that crash, stop all together.

Used by `tandem up`. Children get SIGTERM on shutdown and SIGKILL if they do
not exit within the grace period. A child that crashes is restarted with
backoff; one that keeps crashing right after start is given up on (and the
reason is logged) rather than restarted forever, and one that exits with
EXIT_CANNOT_START (its port is taken, its model is missing) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from tandem.runtime.startup import EXIT_CANNOT_START

from .warm_start import WarmPool

log = logging.getLogger(__name__)

MAX_QUICK_RESTARTS = 5
QUICK_EXIT_SECONDS = 10.0


@dataclass
class ChildSpec:
    """A process to run: a name for logs, its argv, and extra environment.

    `grace_seconds` is how long it may take to exit after SIGTERM before it is
    killed (None: the supervisor's); a worker's covers its drain. A `python -m`
    child with `preload` starts from a spare interpreter that has imported those
    modules already (`warm_start.py`), when one is ready.
    """

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    grace_seconds: float | None = None
    preload: tuple[str, ...] = ()

    @classmethod
    def python_module(cls, name: str, module: str, args: list[str]) -> ChildSpec:
        return cls(name, [sys.executable, "-m", module, *args])


@dataclass
class _Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    quick_restarts: int = 0
    watcher: asyncio.Task[None] | None = None
    retired: bool = False  # being stopped for good by stop_child()


class Supervisor:
    """Owns the children of `tandem up` and the task that watches each one."""

    def __init__(self, grace_seconds: float = 15.0) -> None:
        self.grace_seconds = grace_seconds
        self._children: list[_Child] = []
        self._stopping = False
        self._warm = WarmPool()
        self.failed = asyncio.Event()

    async def start(self, spec: ChildSpec) -> None:
        child = _Child(spec)
        self._children.append(child)
        await self._spawn(child)
        child.watcher = asyncio.create_task(self._watch(child), name=f"supervise {spec.name}")

    @property
    def names(self) -> list[str]:
        """Names of the supervised children, in start order."""
        return [c.spec.name for c in self._children if not c.retired]

    async def stop_child(self, name: str) -> bool:
        """Stop one child for good (no restart): SIGTERM, then SIGKILL after the grace period.

        Returns False if no child has that name.
        """
        child = next((c for c in self._children if c.spec.name == name and not c.retired), None)
        if child is None:
            return False
        child.retired = True
        # Cancel the watcher first, or it would see the exit and restart the child.
        if child.watcher is not None:
            child.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await child.watcher
        if child.proc is not None and child.proc.returncode is None:
            await self._terminate([child.proc], self._grace(child))
        # Forgotten only once it is gone: a stop() meanwhile still reaches it.
        self._children.remove(child)
        log.info("stopped %s", name)
        return True

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec.env}
        proc, how = None, ""
        if spec.preload and spec.argv[:2] == [sys.executable, "-m"] and not self._stopping:
            proc = await self._warm.start(spec.preload, spec.argv[2], spec.argv[3:], env)
            how = " warm" if proc is not None else " cold (no spare ready)"
        if proc is None:
            proc = await asyncio.create_subprocess_exec(*spec.argv, env=env)
        child.proc = proc
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)%s", spec.name, proc.pid, how)

    async def _watch(self, child: _Child) -> None:
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self._stopping:
                return
            lived = time.monotonic() - child.started_at
            if code == EXIT_CANNOT_START:
                log.error("%s cannot start as configured (its error is above); not restarting it",
                          child.spec.name)  # fmt: skip
                self.failed.set()
                return
            child.quick_restarts = child.quick_restarts + 1 if lived < QUICK_EXIT_SECONDS else 0
            if child.quick_restarts > MAX_QUICK_RESTARTS:
                log.error(
                    "%s keeps exiting (code %s) right after start; giving up on it",
                    child.spec.name,
                    code,
                )
                self.failed.set()
                return
            delay = min(2.0**child.quick_restarts, 30.0) if child.quick_restarts else 0.5
            log.warning(
                "%s exited with code %s after %.1fs; restarting in %.1fs",
                child.spec.name,
                code,
                lived,
                delay,
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._spawn(child)

    async def stop(self) -> None:
        """SIGTERM every child (last started first), then SIGKILL what is left after the grace period."""
        self._stopping = True
        await self._warm.close()
        for child in self._children:
            if child.watcher is not None:
                child.watcher.cancel()
        alive = [c for c in reversed(self._children) if c.proc and c.proc.returncode is None]
        running = [c.proc for c in alive if c.proc is not None]
        await self._terminate(running, max((self._grace(c) for c in alive), default=0.0))

    def _grace(self, child: _Child) -> float:
        own = child.spec.grace_seconds
        return self.grace_seconds if own is None else own

    async def _terminate(self, running: list[asyncio.subprocess.Process], grace: float) -> None:
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    log.warning("pid %d ignored SIGTERM; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in running))
