"""Warm starts: a spare interpreter that has already imported a service's modules.

A worker process spends most of its start importing (torch alone takes
seconds, many more on a busy machine), and a worker the planner asks for
waits for that on every scale-up. `WarmPool` keeps one spare interpreter per
set of modules: it imports them, then waits on stdin. Starting a child from
it sends the child's module, flags and environment as one JSON line; the
spare then runs that module's `__main__` as a fresh `python -m` would. A
spare holds no engine, no port and no registration: it is not a worker until
it is given one. The next spare starts importing as soon as one is taken.

Child side: `python -m tandem.launcher.warm_start MODULE...`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import runpy
import signal
import sys
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)


class WarmPool:
    """Owns the spare interpreters, one per set of modules to preload."""

    def __init__(self) -> None:
        self._spares: dict[tuple[str, ...], asyncio.subprocess.Process] = {}
        self._closed = False

    async def start(
        self, preload: tuple[str, ...], module: str, args: Sequence[str], env: Mapping[str, str]
    ) -> asyncio.subprocess.Process | None:
        """`python -m module args` from a spare of `preload` (None: none was there; start
        one cold). Either way the next spare is started."""
        spare = self._spares.pop(preload, None)
        await self._refill(preload, env)
        if spare is None or spare.returncode is not None or spare.stdin is None:
            return None
        order = {"module": module, "argv": list(args), "env": dict(env)}
        try:
            spare.stdin.write(json.dumps(order).encode() + b"\n")
            await spare.stdin.drain()
            spare.stdin.close()
        except (BrokenPipeError, ConnectionResetError):  # it died importing
            return None
        return spare

    async def _refill(self, preload: tuple[str, ...], env: Mapping[str, str]) -> None:
        if self._closed:
            return
        self._spares[preload] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, *preload, stdin=asyncio.subprocess.PIPE, env=dict(env)
        )

    async def close(self) -> None:
        """Stop the spares (they exit on the end of their stdin, or on SIGTERM)."""
        self._closed = True
        spares = list(self._spares.values())
        self._spares.clear()
        for spare in spares:
            with contextlib.suppress(ProcessLookupError):
                spare.terminate()
        await asyncio.gather(*(s.wait() for s in spares))


def main(preload: Sequence[str]) -> None:
    # A Ctrl-C at the terminal is for the children it becomes, not for a spare.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the child imports it again, and fails where it shows
            sys.stderr.write(f"warm start: preloading {name} failed: {exc!r}\n")
    line = sys.stdin.readline()
    if not line:
        return  # the pool closed before handing out this spare
    order = json.loads(line)
    os.environ.update(order["env"])
    sys.argv = [order["module"], *order["argv"]]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    runpy.run_module(order["module"], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
