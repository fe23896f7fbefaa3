"""How a service process runs: an event loop until SIGTERM/SIGINT, and one exit code for how it ended.

Every `tandem <service>` entry point parses its config, sets up logging and
hands a `serve(stop, ready)` coroutine to `run_service`. The service sets
`ready` once it serves and returns (after its own cleanup) once `stop` is
set. How it ended becomes the exit code `tandem up`'s supervisor acts on:

- 0: stopped by a signal;
- EXIT_CANNOT_START (78): a StartupError, logged as one line
  "<component> cannot start: <reason>", so it is not restarted;
- 1: any other failure, logged once with its traceback;
- 130: Ctrl-C before the loop's signal handlers were in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from .startup import EXIT_CANNOT_START, StartupError

Serve = Callable[[asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]]
EXIT_INTERRUPTED = 130


def run_service(
    component: str,
    serve: Serve,
    *,
    log_extra: Mapping[str, object] | None = None,
    cancel_until_ready: bool = False,
    dependencies: str = "",
) -> int:
    """Run `serve(stop, ready)` on uvloop (when installed) until it returns; the exit code.

    `cancel_until_ready`: a signal that arrives before `ready` is set cancels
    `serve` instead of waiting for it (a service still retrying unreachable
    servers has nothing to finish). `dependencies` ("nats URL, etcd URL"):
    a timeout or OS error before `ready` is then logged as the one line
    "<component> could not start (<dependencies>): <error>" instead of a traceback.
    """
    log = logging.getLogger(f"tandem.{component}")
    extra = dict(log_extra or {})

    async def run() -> int:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(stop, ready), name=component)

        def on_signal() -> None:
            stop.set()
            if cancel_until_ready and not ready.is_set():
                task.cancel()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        try:
            await task
            return 0
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            log.info("%s stopped before it was ready", component, extra=extra)
            return 0
        except StartupError as exc:
            log.error("%s cannot start: %s", component, exc, extra=extra)
            return EXIT_CANNOT_START
        except Exception as exc:
            if dependencies and not ready.is_set() and isinstance(exc, TimeoutError | OSError):
                # Unreachable servers at start: one line, not a traceback.
                log.error("%s could not start (%s): %r", component, dependencies, exc, extra=extra)
            else:
                log.exception("%s failed", component, extra=extra)
            return 1

    with contextlib.suppress(KeyboardInterrupt):
        return _run_loop(run())
    return EXIT_INTERRUPTED


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
