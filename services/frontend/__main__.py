"""`python -m tandem.frontend` / `tandem frontend`: serve the OpenAI API until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from tandem.runtime.config import parse_config
from tandem.runtime.gc_tuning import tune_gc
from tandem.runtime.logs import setup_logging
from tandem.runtime.service_main import run_service

from .config import FrontendConfig

COMPONENT = "frontend"


async def serve(config: FrontendConfig, stop: asyncio.Event, ready: asyncio.Event) -> None:
    from .app import Frontend

    frontend = Frontend(config)
    try:
        await frontend.start()
        ready.set()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await frontend.stop()


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(FrontendConfig, argv, prog="tandem frontend")
    setup_logging(config.log_level, component=COMPONENT)
    tune_gc()
    return run_service(COMPONENT, lambda stop, ready: serve(config, stop, ready))


if __name__ == "__main__":
    raise SystemExit(main())
