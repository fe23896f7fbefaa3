"""`python -m tandem.frontend` / `tandem frontend`: serve the OpenAI API until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from tandem.runtime.config import parse_config
from tandem.runtime.logs import setup_logging
from tandem.runtime.startup import EXIT_CANNOT_START, StartupError

from .config import FrontendConfig
from .gc_policy import tune_gc

log = logging.getLogger("tandem.frontend")


async def serve(config: FrontendConfig) -> int:
    from .app import Frontend

    frontend = Frontend(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await frontend.start()
        await stop.wait()
        return 0
    except StartupError as exc:
        log.error("frontend cannot start: %s", exc)
        return EXIT_CANNOT_START
    except Exception:
        log.exception("frontend failed")
        return 1
    finally:
        with contextlib.suppress(Exception):
            await frontend.stop()


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(FrontendConfig, argv, prog="tandem frontend")
    setup_logging(config.log_level, component="frontend")
    tune_gc()
    try:
        import uvloop

        return uvloop.run(serve(config))
    except ImportError:
        return asyncio.run(serve(config))


if __name__ == "__main__":
    raise SystemExit(main())
