"""Supervisor.stop_child: one child stops for good, gracefully or by force; the others run on."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tandem.launcher.supervisor import ChildSpec, Supervisor
from tandem.runtime.startup import EXIT_CANNOT_START

from tests.support.checks import wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# Ignores SIGTERM; touches argv[1] once it does, so the test knows when to signal.
STUBBORN = [sys.executable, "-c",
            "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"]  # fmt: skip


async def test_stop_child_stops_only_that_child_and_does_not_restart_it() -> None:
    supervisor = Supervisor(grace_seconds=10)
    try:
        await supervisor.start(ChildSpec("a", SLEEPER))
        await supervisor.start(ChildSpec("b", SLEEPER))
        [a, b] = [c.proc for c in supervisor._children]
        assert a is not None and b is not None
        assert await supervisor.stop_child("b")
        assert b.returncode is not None  # reaped: stop_child returns once it is gone
        assert supervisor.names == ["a"]
        assert a.returncode is None
        assert not await supervisor.stop_child("b")  # already gone: nothing to do
        assert not supervisor.failed.is_set()
    finally:
        await supervisor.stop()
    assert a.returncode is not None


async def test_stop_child_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    supervisor = Supervisor(grace_seconds=0.5)
    ready = tmp_path / "ready"
    try:
        await supervisor.start(ChildSpec("stubborn", [*STUBBORN, str(ready)]))
        [child] = supervisor._children
        assert child.proc is not None
        await wait_until(ready.exists, 20, "the child to ignore SIGTERM")
        assert await supervisor.stop_child("stubborn")
        assert child.proc.returncode == -signal.SIGKILL
        assert supervisor.names == []
    finally:
        await supervisor.stop()


async def test_a_child_that_cannot_start_is_not_restarted(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    # Counts its starts, then exits as a service whose port is taken would.
    cannot_start = [sys.executable, "-c",
                    f"import sys; open(sys.argv[1], 'a').write('x'); sys.exit({EXIT_CANNOT_START})",
                    str(starts)]  # fmt: skip
    supervisor = Supervisor(grace_seconds=1)
    try:
        await supervisor.start(ChildSpec("frontend", cannot_start))
        await asyncio.wait_for(supervisor.failed.wait(), 20)
        [child] = supervisor._children
        assert child.proc is not None and child.proc.returncode == EXIT_CANNOT_START
        assert starts.read_text() == "x"  # started once, never again
    finally:
        await supervisor.stop()
