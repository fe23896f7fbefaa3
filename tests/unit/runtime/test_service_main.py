"""run_service: how a service process ended becomes one log line and one exit code."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time

import pytest
from tandem.runtime.service_main import run_service
from tandem.runtime.startup import EXIT_CANNOT_START, StartupError


def test_a_service_that_returns_exits_zero() -> None:
    async def serve(stop: asyncio.Event, ready: asyncio.Event) -> None:
        ready.set()

    assert run_service("svc", serve) == 0


def test_a_startup_error_is_one_line_and_exit_78(caplog: pytest.LogCaptureFixture) -> None:
    async def serve(stop: asyncio.Event, ready: asyncio.Event) -> None:
        raise StartupError("port 1 is taken")

    with caplog.at_level(logging.INFO, logger="tandem.svc"):
        assert run_service("svc", serve, log_extra={"instance_id": "i1"}) == EXIT_CANNOT_START
    [record] = caplog.records
    assert record.getMessage() == "svc cannot start: port 1 is taken"
    assert record.exc_info is None and record.instance_id == "i1"


def test_another_failure_is_logged_once_with_exit_1(caplog: pytest.LogCaptureFixture) -> None:
    async def serve(stop: asyncio.Event, ready: asyncio.Event) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO, logger="tandem.svc"):
        assert run_service("svc", serve) == 1
    [record] = caplog.records
    assert record.getMessage() == "svc failed" and record.exc_info is not None


def test_unreachable_servers_at_start_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    async def serve(stop: asyncio.Event, ready: asyncio.Event) -> None:
        raise TimeoutError

    with caplog.at_level(logging.INFO, logger="tandem.svc"):
        assert run_service("svc", serve, dependencies="nats n, etcd e") == 1
    [record] = caplog.records
    assert record.getMessage() == "svc could not start (nats n, etcd e): TimeoutError()"
    assert record.exc_info is None


# Never ready; prints once its signal handlers are in place.
_STUCK = """
import asyncio, sys
from tandem.runtime.service_main import run_service

async def serve(stop, ready):
    print("started", flush=True)
    await asyncio.sleep(3600)

sys.exit(run_service("svc", serve, cancel_until_ready=sys.argv[1] == "cancel"))
"""


@pytest.mark.parametrize("mode", ["cancel", "wait"])
def test_sigterm_before_ready_cancels_only_when_asked(mode: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _STUCK, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        if mode == "cancel":
            assert proc.wait(timeout=20) == 0
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
    finally:
        proc.kill()
        proc.wait()
