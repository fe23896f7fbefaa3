"""`python -m tandem.worker --engine mocker ...`: run one worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from tandem.runtime.config import add_arguments, config_from_namespace
from tandem.runtime.logs import setup_logging
from tandem.runtime.startup import EXIT_CANNOT_START, StartupError

from .config import WorkerConfig
from .registry import EngineUnavailable, load_engine

log = logging.getLogger("tandem.worker")


def _chosen_engine(argv: Sequence[str]) -> str:
    """The --engine value (flag, then TANDEM_ENGINE, then default) before full parsing."""
    pre = argparse.ArgumentParser(add_help=False)
    add_arguments(pre, WorkerConfig)
    known, _ = pre.parse_known_args(argv)
    try:
        return config_from_namespace(WorkerConfig, argparse.Namespace(engine=known.engine)).engine
    except (TypeError, ValueError):
        return WorkerConfig.engine  # type: ignore[return-value]  # full parse reports it


def parse_args(argv: Sequence[str] | None) -> tuple[WorkerConfig, Any]:
    """Worker flags plus the chosen engine's flags, filled from flags, env, defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    engine = _chosen_engine(argv)
    parser = argparse.ArgumentParser(
        prog="tandem worker", description=(WorkerConfig.__doc__ or "").strip()
    )
    add_arguments(parser, WorkerConfig)
    engine_cls: type[Any] | None = None
    try:
        engine_cls, _ = load_engine(engine)
    except EngineUnavailable as exc:
        parser.epilog = f"Engine flags unavailable: {exc}"
    if engine_cls is not None:
        group = parser.add_argument_group(f"{engine} engine", (engine_cls.__doc__ or "").strip())
        add_arguments(group, engine_cls)  # type: ignore[arg-type]
    namespace = parser.parse_args(argv)
    if engine_cls is None:
        parser.error(parser.epilog or f"engine {engine!r} unavailable")
    try:
        return (
            config_from_namespace(WorkerConfig, namespace),
            config_from_namespace(engine_cls, namespace),
        )
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
        raise  # unreachable


async def serve(config: WorkerConfig, engine_config: Any) -> int:
    from .server import WorkerServer

    server = WorkerServer(config, engine_config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        await stop.wait()
        return 0
    except StartupError as exc:
        log.error("worker cannot start: %s", exc, extra={"instance_id": config.instance_id})
        return EXIT_CANNOT_START
    except Exception:
        log.exception("worker failed", extra={"instance_id": config.instance_id})
        return 1
    finally:
        with contextlib.suppress(Exception):
            await server.stop()


def main(argv: list[str] | None = None) -> int:
    config, engine_config = parse_args(argv)
    setup_logging(config.log_level, component="worker")
    try:
        import uvloop

        return uvloop.run(serve(config, engine_config))
    except ImportError:
        return asyncio.run(serve(config, engine_config))


if __name__ == "__main__":
    sys.exit(main())
