"""`python -m tandem.worker --engine mocker ...`: run one worker (or `--num-workers` N) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

from tandem.runtime.config import add_arguments, config_from_namespace
from tandem.runtime.gc_tuning import tune_gc
from tandem.runtime.logs import setup_logging
from tandem.runtime.service_main import run_service

from .config import WorkerConfig
from .registry import ENGINES, EngineUnavailable, load_engine

COMPONENT = "worker"


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
        config = config_from_namespace(WorkerConfig, namespace)
        engine_config = config_from_namespace(engine_cls, namespace)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
        raise  # unreachable
    if config.num_workers > 1 and not ENGINES[engine].hosts_many:
        many = ", ".join(name for name, entry in ENGINES.items() if entry.hosts_many)
        parser.error(
            f"--num-workers {config.num_workers}: the {engine} engine runs one worker per "
            f"process (it uses the machine's cores or GPU); start more processes instead, "
            f"or use --engine {many}"
        )
    return config, engine_config


async def serve(
    config: WorkerConfig, engine_config: Any, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    from .host import WorkerHost

    host = WorkerHost(config, engine_config)
    try:
        await host.start()
        ready.set()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await host.stop()


def main(argv: list[str] | None = None) -> int:
    config, engine_config = parse_args(argv)
    setup_logging(config.log_level, component=COMPONENT)
    tune_gc()
    return run_service(
        COMPONENT,
        lambda stop, ready: serve(config, engine_config, stop, ready),
        log_extra={"instance_id": config.instance_id},  # with --num-workers: their prefix
    )


if __name__ == "__main__":
    sys.exit(main())
