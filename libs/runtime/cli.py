"""The `tandem` command: `tandem up` runs a local cluster; `tandem <service>` runs one service.

`tandem frontend|worker|router ...` is what a container runs: it calls that
service's `main(argv)`. `tandem up` starts nats-server and etcd (unless given
with --nats/--etcd), N workers and a frontend, supervises them, and stops them
all on Ctrl-C or SIGTERM. Flags it does not know are passed on to every
worker (engine flags such as --num-kv-blocks or --speedup-ratio).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from .config import option, parse_known_config
from .local_infra import InfraError, LocalInfra
from .logs import setup_logging
from .supervisor import ChildSpec, Supervisor

log = logging.getLogger("tandem.up")

SERVICES = {
    "frontend": ("tandem.frontend.__main__", "OpenAI-compatible HTTP frontend"),
    "worker": (
        "tandem.worker.__main__",
        "a worker: gRPC server in front of an engine (torch or mocker)",
    ),
    "router": ("tandem.router.__main__", "standalone KV-aware router service (gRPC)"),
}


@dataclass(frozen=True, kw_only=True)
class UpConfig:
    """Run a local Tandem cluster: nats + etcd (unless given), N workers, a frontend on --http-port.

    Flags not listed here are passed on to every worker (see `tandem worker --help`),
    e.g. --num-kv-blocks, --kv-cache-block-size, --speedup-ratio, --dtype.
    """

    engine: str = option("torch", "Engine for every worker.", choices=("torch", "mocker"))
    workers: int = option(2, "Number of worker processes.")
    http_port: int = option(8000, "Port of the OpenAI-compatible HTTP API.")
    http_host: str = option("0.0.0.0", "Interface the HTTP API listens on.")
    router_mode: str = option(
        "kv", "How the frontend picks a worker.", choices=("kv", "round-robin", "random")
    )
    nats: str = option("", "Use this running NATS (JetStream on) instead of starting one.")
    etcd: str = option("", "Use this running etcd instead of starting one.")
    namespace: str = option("default", "Deployment namespace.")
    log_level: str = option(
        "INFO", "Log level for every process.", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    ready_timeout: float = option(
        600.0, "Seconds to wait for the cluster to serve before giving up."
    )


def _models_ready(port: int) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as resp:
            return [m["id"] for m in json.load(resp).get("data", [])]
    except (OSError, ValueError):
        return []


async def _wait_ready(config: UpConfig, supervisor: Supervisor) -> list[str]:
    async with asyncio.timeout(config.ready_timeout):
        while not supervisor.failed.is_set():
            models = await asyncio.to_thread(_models_ready, config.http_port)
            if models:
                return models
            await asyncio.sleep(0.5)
    raise RuntimeError("a process kept failing at start; see the log above")


async def run_up(config: UpConfig, worker_args: list[str]) -> int:
    infra: LocalInfra | None = None
    if not (config.nats and config.etcd):
        try:
            infra = await asyncio.to_thread(LocalInfra.start)
        except InfraError as exc:
            log.error("%s", exc)
            return 1
        log.info(
            "started nats at %s and etcd at %s (data in %s)",
            infra.nats_url,
            infra.etcd_url,
            infra.root,
        )
    nats_url = config.nats or (infra.nats_url if infra else "")
    etcd_url = config.etcd or (infra.etcd_url if infra else "")
    common = [
        "--nats",
        nats_url,
        "--etcd",
        etcd_url,
        "--namespace",
        config.namespace,
        "--log-level",
        config.log_level,
    ]

    supervisor = Supervisor()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        worker_args = _with_thread_share(config, worker_args)
        for i in range(config.workers):
            args = ["--engine", config.engine, *common, *worker_args]
            await supervisor.start(ChildSpec.python_module(f"worker-{i}", "tandem.worker", args))
        frontend_args = [*common, "--http-port", str(config.http_port), "--http-host", config.http_host,
                         "--router-mode", config.router_mode]  # fmt: skip
        await supervisor.start(
            ChildSpec.python_module("frontend", "tandem.frontend", frontend_args)
        )
        ready = asyncio.create_task(_wait_ready(config, supervisor))
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({ready, stopped, asyncio.create_task(supervisor.failed.wait())},
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if ready in done and ready.exception() is None:
            host = "localhost" if config.http_host in ("0.0.0.0", "::") else config.http_host
            log.info("Tandem is serving %s on http://%s:%d/v1 (Ctrl-C stops everything)",
                     ", ".join(ready.result()), host, config.http_port)  # fmt: skip
            await asyncio.wait({stopped, asyncio.create_task(supervisor.failed.wait())},
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        elif ready in done:
            log.error("cluster did not come up: %s", ready.exception())
        ready.cancel()
        return 1 if supervisor.failed.is_set() else 0
    finally:
        log.info("stopping all processes")
        await supervisor.stop()
        if infra is not None:
            await asyncio.to_thread(infra.stop)
        log.info("stopped")


def _with_thread_share(config: UpConfig, worker_args: list[str]) -> list[str]:
    """Torch workers on one machine split its cores unless told otherwise.

    Each torch worker would otherwise use every core, and N of them would
    fight over the same cores (slower than one worker with all of them).
    """
    if config.engine != "torch" or any(a.startswith("--num-threads") for a in worker_args):
        return worker_args
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return [*worker_args, "--num-threads", str(max(1, cores // max(1, config.workers)))]


def _usage() -> str:
    lines = ["usage: tandem <command> [flags]", "", "commands:",
             "  up          run a local cluster (nats, etcd, workers, frontend) on http://localhost:8000/v1"]  # fmt: skip
    lines += [f"  {name:<11} {doc}" for name, (_, doc) in SERVICES.items()]
    lines += ["", "`tandem <command> --help` lists each command's flags."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in SERVICES:
        module = importlib.import_module(SERVICES[command][0])
        return int(module.main(rest) or 0)
    if command == "up":
        config, worker_args = parse_known_config(UpConfig, rest, prog="tandem up")
        setup_logging(config.log_level, component="up")
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(run_up(config, worker_args))
        return 130
    print(f"tandem: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
