"""Supervise a set of child processes: restart the ones that crash, stop all together.

Used by `tandem up`. Children get SIGTERM on shutdown and SIGKILL if they do
not exit within the grace period. A child that crashes is restarted with
backoff; one that keeps crashing right after start is given up on (and the
reason is logged) rather than restarted forever.
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

log = logging.getLogger(__name__)

MAX_QUICK_RESTARTS = 5
QUICK_EXIT_SECONDS = 10.0


@dataclass
class ChildSpec:
    """A process to run: a name for logs, its argv, and extra environment."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def python_module(cls, name: str, module: str, args: list[str]) -> ChildSpec:
        return cls(name, [sys.executable, "-m", module, *args])


@dataclass
class _Child:
    spec: ChildSpec
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    quick_restarts: int = 0


class Supervisor:
    """Owns the children of `tandem up` and the task that watches each one."""

    def __init__(self, grace_seconds: float = 15.0) -> None:
        self.grace_seconds = grace_seconds
        self._children: list[_Child] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.failed = asyncio.Event()

    async def start(self, spec: ChildSpec) -> None:
        child = _Child(spec)
        self._children.append(child)
        await self._spawn(child)
        self._tasks.append(asyncio.create_task(self._watch(child), name=f"supervise {spec.name}"))

    async def _spawn(self, child: _Child) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **child.spec.env}
        child.proc = await asyncio.create_subprocess_exec(*child.spec.argv, env=env)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.spec.name, child.proc.pid)

    async def _watch(self, child: _Child) -> None:
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self._stopping:
                return
            lived = time.monotonic() - child.started_at
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
        for task in self._tasks:
            task.cancel()
        running = [c.proc for c in reversed(self._children) if c.proc and c.proc.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.grace_seconds):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    log.warning("pid %d ignored SIGTERM; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in running))
