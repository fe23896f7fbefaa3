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
import signal
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from .config import option, parse_known_config
from .host import usable_cpus
from .local_infra import InfraError, LocalInfra
from .logs import setup_logging
from .supervisor import ChildSpec, Supervisor
from .tasks import cancel_and_wait

log = logging.getLogger("tandem.up")

SERVICES = {
    "frontend": ("tandem.frontend.__main__", "OpenAI-compatible HTTP frontend"),
    "worker": (
        "tandem.worker.__main__",
        "a worker: gRPC server in front of an engine (torch or mocker)",
    ),
    "router": ("tandem.router.__main__", "standalone KV-aware router service (gRPC)"),
    "planner": (
        "tandem.planner.__main__",
        "load-based autoscaler: writes each model's desired worker count to etcd",
    ),
}


@dataclass(frozen=True, kw_only=True)
class UpConfig:
    """Run a local Tandem cluster: nats + etcd (unless given), N workers, a frontend on --http-port.

    Flags not listed here are passed on to every worker (see `tandem worker --help`),
    e.g. --num-kv-blocks, --kv-cache-block-size, --speedup-ratio, --dtype.

    With --planner the worker pool follows the load: it starts at --workers and
    the planner (see `tandem planner --help`) grows it up to --max-workers.
    """

    engine: str = option("torch", "Engine for every worker.", choices=("torch", "mocker"))
    workers: int = option(2, "Number of worker processes (the starting size with --planner).")
    planner: bool = option(False, "Scale the worker pool with the planner.")
    min_workers: int = option(1, "With --planner: fewest workers the planner asks for.")
    max_workers: int = option(
        4, "With --planner: most workers; torch workers split the cores by this number."
    )
    planner_adjustment_interval: float = option(
        10.0, "With --planner: seconds between two scaling decisions."
    )
    planner_scale_up_kv_usage: float = option(
        0.8, "With --planner: scale up above this KV usage (active/total blocks)."
    )
    planner_scale_down_kv_usage: float = option(
        0.3, "With --planner: scale down below this KV usage."
    )
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

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.planner and not self.min_workers <= self.workers <= self.max_workers:
            raise ValueError(
                f"--workers ({self.workers}) must be within --min-workers ({self.min_workers}) "
                f"and --max-workers ({self.max_workers})"
            )
        if self.planner:
            # The planner's own checks, so a bad threshold fails here and not
            # in a child that keeps crashing after the cluster started.
            from tandem.planner.config import PlannerConfig

            try:
                PlannerConfig(min_workers=self.min_workers, max_workers=self.max_workers,
                              adjustment_interval=self.planner_adjustment_interval,
                              scale_up_kv_usage=self.planner_scale_up_kv_usage,
                              scale_down_kv_usage=self.planner_scale_down_kv_usage)  # fmt: skip
            except ValueError as exc:
                raise ValueError(
                    f"planner: {exc} (in `tandem up`, those flags start with --planner-)"
                ) from None

    def planner_args(self, model: str) -> list[str]:
        """The flags of the planner child that `tandem up --planner` runs for `model`."""
        return ["--model", model, "--min-workers", str(self.min_workers),
                "--max-workers", str(self.max_workers),
                "--adjustment-interval", str(self.planner_adjustment_interval),
                "--scale-up-kv-usage", str(self.planner_scale_up_kv_usage),
                "--scale-down-kv-usage", str(self.planner_scale_down_kv_usage)]  # fmt: skip


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
    raise RuntimeError("a process could not start; see the log above")


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
    pool: asyncio.Task[None] | None = None
    try:
        worker_args = _with_thread_share(config, worker_args)
        args = ["--engine", config.engine, *common, *worker_args]
        if config.planner:
            pool = asyncio.create_task(
                _planner_pool(config, supervisor, args, common, etcd_url), name="planner pool"
            )
        else:
            for i in range(config.workers):
                await supervisor.start(
                    ChildSpec.python_module(f"worker-{i}", "tandem.worker", args)
                )
        frontend_args = [*common, "--http-port", str(config.http_port), "--http-host", config.http_host,
                         "--router-mode", config.router_mode]  # fmt: skip
        await supervisor.start(
            ChildSpec.python_module("frontend", "tandem.frontend", frontend_args)
        )
        ready = asyncio.create_task(_wait_ready(config, supervisor))
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(supervisor.failed.wait())
        ended = {stopped, failed} | ({pool} if pool is not None else set())
        done, _ = await asyncio.wait({ready, *ended}, return_when=asyncio.FIRST_COMPLETED)
        if ready in done and ready.exception() is None:
            host = "localhost" if config.http_host in ("0.0.0.0", "::") else config.http_host
            log.info("Tandem is serving %s on http://%s:%d/v1 (Ctrl-C stops everything)",
                     ", ".join(ready.result()), host, config.http_port)  # fmt: skip
            done, _ = await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
        elif ready in done:
            log.error("cluster did not come up: %s", ready.exception())
        ready.cancel()
        failed.cancel()
        if pool is not None and pool in done:
            log.error("the planner's worker pool stopped: %s", pool.exception())
            return 1
        return 1 if supervisor.failed.is_set() else 0
    finally:
        log.info("stopping all processes")
        await cancel_and_wait(pool)
        await supervisor.stop()
        if infra is not None:
            await asyncio.to_thread(infra.stop)
        log.info("stopped")


async def _planner_pool(
    config: UpConfig,
    supervisor: Supervisor,
    worker_args: list[str],
    common: list[str],
    etcd_url: str,
) -> None:
    """Run the worker pool of `tandem up --planner`: the local connector plus a planner child.

    Workers start at --workers; once the first one registers, its model is the
    one the planner scales, the starting size is written as the target (a
    target left by an earlier run in this namespace must not resize a fresh
    cluster), and from then on the pool follows the target key.
    """
    from tandem.planner.connectors import LocalConnector, follow_target
    from tandem.planner.target import ReplicaTarget, TargetStore

    from .discovery import Discovery

    connector = LocalConnector(
        supervisor,
        lambda name: ChildSpec.python_module(name, "tandem.worker", worker_args),
        config.max_workers,
    )
    await connector.scale_to(config.workers, "starting size (--workers)")
    discovery = Discovery(etcd_url, config.namespace)
    try:
        await discovery.start()
        workers = await discovery.instance_set("worker").start()
        await workers.wait_for(lambda found: len(found) > 0, timeout=config.ready_timeout)
        model = next(iter(workers)).model
        await workers.close()
        store = TargetStore(discovery.client, config.namespace)
        await store.write(
            ReplicaTarget(model, config.workers, "tandem up: starting size", time.time())
        )
        await supervisor.start(ChildSpec.python_module("planner", "tandem.planner",
                                                       [*common, *config.planner_args(model)]))  # fmt: skip
        log.info("planner scales %s between %d and %d workers", model, config.min_workers,
                 config.max_workers)  # fmt: skip
        await follow_target(store, model, connector)
    finally:
        await discovery.close()


def _with_thread_share(config: UpConfig, worker_args: list[str]) -> list[str]:
    """Torch workers on one machine split its cores unless told otherwise.

    Each torch worker would otherwise use every core, and N of them would
    fight over the same cores (slower than one worker with all of them).
    """
    if config.engine != "torch" or any(a.startswith("--num-threads") for a in worker_args):
        return worker_args
    cores = usable_cpus()
    # With the planner the pool may grow to --max-workers: size each share for that.
    sharers = config.max_workers if config.planner else config.workers
    return [*worker_args, "--num-threads", str(max(1, cores // max(1, sharers)))]


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
