"""`tandem up`: a local cluster of nats, etcd, workers and a frontend, supervised until Ctrl-C.

It starts nats-server and etcd (unless given with --nats/--etcd), N workers
and a frontend, waits until the frontend serves a model, and stops them all
on Ctrl-C or SIGTERM. Each child's flags come from a typed config built here
(`FrontendConfig`, `WorkerConfig`, `PlannerConfig`), so a bad value fails in
`tandem up` at once; flags `tandem up` does not know are passed on to every
worker unchanged (engine flags such as --num-kv-blocks or --speedup-ratio).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from tandem.frontend.config import FrontendConfig
from tandem.planner.config import PlannerConfig
from tandem.planner.connectors import follow_target
from tandem.planner.predictors import PREDICTORS
from tandem.planner.target import ReplicaTarget, TargetStore
from tandem.router.config import ROUTER_MODES
from tandem.runtime.config import (
    RuntimeConfig,
    config_from_env,
    config_to_argv,
    option,
    parse_known_config,
    secret_environ,
)
from tandem.runtime.discovery import Discovery
from tandem.runtime.host import usable_cpus
from tandem.runtime.model_card import DEFAULT_MODEL_NAME
from tandem.runtime.tasks import cancel_and_wait
from tandem.worker.config import WorkerConfig
from tandem.worker.registry import ENGINES

from .local_connector import LocalConnector
from .local_infra import InfraError, LocalInfra
from .supervisor import ChildSpec, Supervisor
from .worker_layout import WorkerLayout

log = logging.getLogger("tandem.up")
_WORKER_EXIT_MARGIN_SECONDS = 10.0


@dataclass(frozen=True, kw_only=True)
class UpConfig(WorkerLayout):
    """Run a local Tandem cluster: nats + etcd (unless given), N workers, a frontend on --http-port.

    Flags not listed here are passed on to every worker (see `tandem worker --help`),
    e.g. --num-kv-blocks, --kv-cache-block-size, --speedup-ratio, --dtype.

    With --planner the worker pool follows the load: it starts at --workers and
    the planner (see `tandem planner --help`) grows it up to --max-workers; a
    disaggregated model's prefill and decode pools start at --prefill-workers and
    --decode-workers and are sized each on its own, --max-workers in all.

    With --prefill-workers P --decode-workers D the model is served disaggregated
    instead of by --workers aggregated workers: long prompts are prefilled on the P
    prefill workers and their KV moved to the D decode workers (see
    --max-local-prefill-length).
    """

    engine: str = option("torch", "Engine for every worker.", choices=tuple(ENGINES))
    workers: int = option(2, "Number of workers (the starting size with --planner).")
    workers_per_process: int = option(
        0,
        "Workers each worker process hosts (`tandem worker --num-workers`; engines that allow "
        "it: mocker). 0 = mocker workers are spread over one process per core, torch "
        "workers get a process each. With --planner every process hosts one worker.",
    )
    prefill_workers: int = option(
        0,
        "Prefill workers (`--disaggregation-mode prefill`); with --decode-workers, instead "
        "of --workers aggregated ones.",
    )
    decode_workers: int = option(
        0, "Decode workers (`--disaggregation-mode decode`); with --prefill-workers."
    )
    max_local_prefill_length: int = option(
        FrontendConfig.max_local_prefill_length,
        "Disaggregated: the frontend prefills on a prefill worker only prompts with more "
        "uncached tokens than this on their decode worker.",
    )
    max_prefill_queue_size: int = option(
        FrontendConfig.max_prefill_queue_size,
        "Disaggregated: ... and only while fewer prefill jobs than this are queued.",
    )
    planner: bool = option(False, "Scale the worker pool with the planner.")
    min_workers: int = option(1, "With --planner: fewest workers the planner asks for.")
    max_workers: int = option(
        4, "With --planner: most workers; torch workers split the cores by this number."
    )
    # The planner's own defaults: one source, so `--help` here shows what the planner uses.
    planner_adjustment_interval: float = option(
        PlannerConfig.adjustment_interval, "With --planner: seconds between two scaling decisions."
    )
    planner_scale_up_kv_usage: float = option(
        PlannerConfig.scale_up_kv_usage,
        "With --planner: scale up above this KV usage (active/total blocks).",
    )
    planner_scale_down_kv_usage: float = option(
        PlannerConfig.scale_down_kv_usage, "With --planner: scale down below this KV usage."
    )
    planner_mode: str = option(
        PlannerConfig.mode,
        "With --planner: size the pool on load, or to the TTFT and ITL targets (sla).",
        choices=("load", "sla"),
    )
    planner_profile: str = option(
        "", "With --planner-mode sla: the worker profile `tandem profile` wrote."
    )
    planner_ttft_target_ms: float = option(
        PlannerConfig.ttft_target_ms, "With --planner-mode sla: mean TTFT to meet (ms)."
    )
    planner_itl_target_ms: float = option(
        PlannerConfig.itl_target_ms, "With --planner-mode sla: mean inter-token latency (ms)."
    )
    planner_predictor: str = option(
        PlannerConfig.predictor,
        "With --planner-mode sla: how the next interval's demand is predicted.",
        choices=tuple(PREDICTORS),
    )
    planner_predict_ahead: int = option(
        PlannerConfig.predict_ahead,
        "With --planner-mode sla: size for the busiest of the next N intervals' demand.",
    )
    warm_start: bool = option(
        True,
        "With --planner: keep one spare interpreter that has imported the worker's modules, "
        "so a worker the planner asks for skips that import (seconds: torch is among them).",
    )
    http_port: int = option(8000, "Port of the OpenAI-compatible HTTP API.")
    http_host: str = option("0.0.0.0", "Interface the HTTP API listens on.")
    grpc_port: int = option(
        FrontendConfig.grpc_port,
        "Port of the frontend's KServe v2 gRPC inference API (on --http-host); 0 = none.",
    )
    router_mode: str = option("kv", "How the frontend picks a worker.", choices=ROUTER_MODES)
    api_key: list[str] = option(
        default_factory=list,
        help="API key the frontend requires on /v1 (repeat or comma-separate for several); "
        "handed to it in its environment, never its command line. Prefer TANDEM_API_KEY or "
        "--api-key-file: flags are visible in `ps`.",
        secret=True,
    )
    api_key_file: str = option(
        "", "File of API keys for the frontend, one per line (# comments ignored)."
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
        if self.workers_per_process < 0:
            raise ValueError(f"--workers-per-process must be >= 0, got {self.workers_per_process}")
        if self.workers_per_process > 1 and not ENGINES[self.engine].hosts_many:
            raise ValueError(f"--workers-per-process: the {self.engine} engine runs one worker "
                             "per process")  # fmt: skip
        if self.workers_per_process > 1 and self.planner:
            raise ValueError("--workers-per-process: with --planner every process hosts one "
                             "worker (the planner scales processes)")  # fmt: skip
        self.check_layout()
        if self.planner and self.is_disaggregated:
            if self.num_workers > self.max_workers:
                raise ValueError(
                    f"--prefill-workers ({self.prefill_workers}) and --decode-workers "
                    f"({self.decode_workers}) must be within --max-workers ({self.max_workers})"
                )
        elif self.planner and not self.min_workers <= self.workers <= self.max_workers:
            raise ValueError(
                f"--workers ({self.workers}) must be within --min-workers ({self.min_workers}) "
                f"and --max-workers ({self.max_workers})"
            )
        # The children's own checks, so a bad value fails here and not in a
        # child that keeps crashing after the cluster started.
        try:
            self.frontend_config()
        except ValueError as exc:
            raise ValueError(f"frontend: {exc}") from None
        if self.planner:
            try:
                self.planner_config(DEFAULT_MODEL_NAME)
            except ValueError as exc:
                raise ValueError(
                    f"planner: {exc} (in `tandem up`, those flags start with --planner-)"
                ) from None

    def pools(self) -> list[tuple[str, int]]:
        """(role, number of workers) of each pool that starts."""
        if self.is_disaggregated:
            return [("prefill", self.prefill_workers), ("decode", self.decode_workers)]
        return [("aggregated", self.workers)]

    # Each child's config is what the child would read from the environment it
    # inherits, with what `tandem up` decides on top; `config_to_argv` then passes
    # just those decisions, so a child's other TANDEM_* settings still reach it.

    def runtime(self, nats: str = "", etcd: str = "") -> RuntimeConfig:
        """What every child shares: this cluster's servers, namespace and log level.

        Empty `nats`/`etcd` leave them to the environment and defaults (before
        the local servers exist, when only the other fields are checked).
        """
        servers = {"nats": nats, "etcd": etcd}
        return config_from_env(
            RuntimeConfig,
            namespace=self.namespace,
            log_level=self.log_level,
            **{name: url for name, url in servers.items() if url},
        )

    def frontend_config(self, runtime: RuntimeConfig | None = None) -> FrontendConfig:
        """The frontend child: the HTTP API on --http-port, routing with --router-mode."""
        return config_from_env(
            FrontendConfig,
            **_fields(runtime or self.runtime()),
            http_port=self.http_port,
            http_host=self.http_host,
            grpc_port=self.grpc_port,
            router_mode=self.router_mode,
            api_key=self.api_key,
            api_key_file=self.api_key_file,
            max_local_prefill_length=self.max_local_prefill_length,
            max_prefill_queue_size=self.max_prefill_queue_size,
        )

    def worker_config(
        self, runtime: RuntimeConfig | None = None, num_workers: int = 1, role: str = "aggregated"
    ) -> WorkerConfig:
        """A worker child hosting `num_workers` of `role`, before the pass-through flags (its
        instance id is its own)."""
        return config_from_env(
            WorkerConfig,
            **_fields(runtime or self.runtime()),
            engine=self.engine,
            num_workers=num_workers,
            disaggregation_mode=role,
        )

    def worker_processes(self, workers: int | None = None) -> list[int]:
        """How many of `workers` (--workers) each worker process hosts, one entry per process.

        The planner scales processes, so with --planner each hosts one worker.
        """
        count = self.workers if workers is None else workers
        per = self.workers_per_process
        if self.planner or not ENGINES[self.engine].hosts_many:
            per = 1
        elif per == 0:
            per = -(-self.num_workers // usable_cpus())
        num_processes = -(-count // per)
        return [
            count // num_processes + (1 if i < count % num_processes else 0)
            for i in range(num_processes)
        ]

    def planner_config(self, model: str, runtime: RuntimeConfig | None = None) -> PlannerConfig:
        """The planner child that `tandem up --planner` runs for `model`.

        Disaggregated, each pool has at least one worker and leaves the other one.
        """
        min_workers, pools = self.min_workers, {}
        if self.is_disaggregated:
            min_workers = max(2, min_workers)
            pools = {"min_prefill_workers": 1, "max_prefill_workers": self.max_workers - 1,
                     "min_decode_workers": 1, "max_decode_workers": self.max_workers - 1}  # fmt: skip
        return config_from_env(
            PlannerConfig,
            **_fields(runtime or self.runtime()),
            model=model,
            min_workers=min_workers,
            max_workers=self.max_workers,
            adjustment_interval=self.planner_adjustment_interval,
            scale_up_kv_usage=self.planner_scale_up_kv_usage,
            scale_down_kv_usage=self.planner_scale_down_kv_usage,
            mode=self.planner_mode,
            profile=self.planner_profile,
            ttft_target_ms=self.planner_ttft_target_ms,
            itl_target_ms=self.planner_itl_target_ms,
            predictor=self.planner_predictor,
            predict_ahead=self.planner_predict_ahead,
            # The SLA planner reads demand and latency from this cluster's frontend.
            frontend_url=[f"http://127.0.0.1:{self.http_port}"],
            **pools,
        )


def _fields(runtime: RuntimeConfig) -> dict[str, Any]:
    return {f.name: getattr(runtime, f.name) for f in dataclasses.fields(RuntimeConfig)}


def worker_argv(config: WorkerConfig, passed_on: list[str]) -> list[str]:
    """A worker child's flags: its typed config, then the flags `tandem up` passes on unchanged.

    The instance id is left out: each worker process (and each restart) draws its own.
    """
    return [*config_to_argv(config, omit=("instance_id",)), *passed_on]


def frontend_spec(config: FrontendConfig) -> ChildSpec:
    """The frontend child: its config as flags, its API keys in its environment (not in `ps`)."""
    spec = ChildSpec.python_module("frontend", "tandem.frontend", config_to_argv(config))
    return dataclasses.replace(spec, env=secret_environ(config))


def _models_ready(port: int) -> list[str]:
    """Models the frontend has a live worker of, from `/health` (open even with API keys)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return [name for name, workers in json.load(resp)["models"].items() if workers]
    except (OSError, ValueError, KeyError, AttributeError):
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
    runtime = config.runtime(
        nats=config.nats or (infra.nats_url if infra else ""),
        etcd=config.etcd or (infra.etcd_url if infra else ""),
    )

    supervisor = Supervisor()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    pool: asyncio.Task[None] | None = None
    try:
        passed_on = _with_thread_share(config, worker_args)
        # Stopped workers drain first: the supervisor waits that long before it kills one.
        grace = worker_stop_seconds(worker_argv(config.worker_config(runtime), passed_on))
        if config.planner:
            pool = asyncio.create_task(
                _planner_pool(config, supervisor, passed_on, runtime, grace), name="planner pool"
            )
        else:
            for role, count in config.pools():
                name = "worker" if role == "aggregated" else role
                for i, num_workers in enumerate(config.worker_processes(count)):
                    hosted = worker_argv(
                        config.worker_config(runtime, num_workers, role), passed_on
                    )
                    child = ChildSpec.python_module(f"{name}-{i}", "tandem.worker", hosted)
                    await supervisor.start(dataclasses.replace(child, grace_seconds=grace))
        await supervisor.start(frontend_spec(config.frontend_config(runtime)))
        ready = asyncio.create_task(_wait_ready(config, supervisor))
        stopped = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(supervisor.failed.wait())
        ended = {stopped, failed} | ({pool} if pool is not None else set())
        done, _ = await asyncio.wait({ready, *ended}, return_when=asyncio.FIRST_COMPLETED)
        if ready in done and ready.exception() is None:
            host = "localhost" if config.http_host in ("0.0.0.0", "::") else config.http_host
            kserve = f", KServe gRPC on {host}:{config.grpc_port}" if config.grpc_port else ""
            log.info("Tandem is serving %s on http://%s:%d/v1%s (Ctrl-C stops everything)",
                     ", ".join(ready.result()), host, config.http_port, kserve)  # fmt: skip
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
    passed_on: list[str],
    runtime: RuntimeConfig,
    grace: float,
) -> None:
    """Run the worker pools of `tandem up --planner`: the local connector plus a planner child.

    Pools start at their starting sizes; once the first worker registers, its
    model is the one the planner scales, the starting sizes are written as
    the target (a target left by an earlier run in this namespace must not
    resize a fresh cluster), and from then on the pools follow the target key.
    """
    starting = dict(config.pools())
    roles = tuple(starting)
    worker_args = {
        role: worker_argv(config.worker_config(runtime, 1, role), passed_on) for role in roles
    }

    preload = ("tandem.worker.__main__", ENGINES[config.engine].module) if config.warm_start else ()

    def spec(name: str, role: str) -> ChildSpec:
        child = ChildSpec.python_module(name, "tandem.worker", worker_args[role])
        return dataclasses.replace(child, grace_seconds=grace, preload=preload)

    connector = LocalConnector(supervisor, spec, config.max_workers, roles)
    await connector.resize(starting, "starting size")
    discovery = Discovery(runtime.etcd, config.namespace)
    try:
        await discovery.start()
        workers = await discovery.instance_set("worker").start()
        await workers.wait_for(lambda found: len(found) > 0, timeout=config.ready_timeout)
        model = next(iter(workers)).model
        await workers.close()
        store = TargetStore(discovery.client, config.namespace)
        pools = starting if connector.is_disaggregated else {}
        await store.write(
            ReplicaTarget(
                model, config.num_workers, "tandem up: starting size", time.time(), pools=pools
            )
        )
        planner_args = config_to_argv(config.planner_config(model, runtime))
        await supervisor.start(ChildSpec.python_module("planner", "tandem.planner", planner_args))
        log.info("planner scales %s between %d and %d workers", model, config.min_workers,
                 config.max_workers)  # fmt: skip
        await follow_target(store, model, connector)
    finally:
        await discovery.close()


def worker_stop_seconds(argv: list[str]) -> float:
    """How long a worker with these flags may take to exit on SIGTERM: its drain, then its
    shutdown grace, then a margin for leaving etcd and stopping the engine."""
    worker, _ = parse_known_config(WorkerConfig, argv, prog="tandem worker")
    return worker.drain_timeout + worker.shutdown_grace_seconds + _WORKER_EXIT_MARGIN_SECONDS


def _with_thread_share(config: UpConfig, worker_args: list[str]) -> list[str]:
    """Torch workers on one machine split its cores unless told otherwise.

    Each torch worker would otherwise use every core, and N of them would
    fight over the same cores (slower than one worker with all of them).
    """
    if config.engine != "torch" or any(a.startswith("--num-threads") for a in worker_args):
        return worker_args
    cores = usable_cpus()
    # With the planner the pool may grow to --max-workers: size each share for that.
    sharers = config.max_workers if config.planner else config.num_workers
    return [*worker_args, "--num-threads", str(max(1, cores // max(1, sharers)))]
