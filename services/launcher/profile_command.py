"""`tandem profile`: measure one worker (TTFT and ITL surfaces) into the file `tandem planner --mode sla` reads.

Given `--endpoint`, it sweeps that running worker. Otherwise it starts one:
a private nats + etcd and a `tandem worker --engine E` with every flag it
does not know passed on (`--speedup-ratio`, `--num-kv-blocks`, ...), sweeps
it, and stops them all. Profile the workers the planner will scale, with the
same flags: the figures are theirs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
from tandem.planner.profiler import Profiler, SweepPlan
from tandem.runtime.config import option, parse_known_config
from tandem.runtime.discovery import Discovery
from tandem.runtime.logs import setup_logging
from tandem.worker.registry import ENGINES

from .local_infra import InfraError, LocalInfra

log = logging.getLogger("tandem.profile")


def _ints(values: Sequence[str], flag: str) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(v) for v in values}))
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {','.join(values)}") from None
    if not out or out[0] < 1:
        raise ValueError(f"{flag} needs positive integers, got {','.join(values)}")
    return out


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    """Measure one worker for the SLA planner: TTFT against input length and load, ITL against
    batch size and context length; writes a JSON profile (`tandem planner --profile`).

    Without --endpoint it starts the worker itself (with nats and etcd of its own);
    flags not listed here are passed on to that worker (see `tandem worker --help`).
    """

    output: str = option("profile.json", "File the profile is written to.")
    endpoint: str = option(
        "", "Profile this running worker (gRPC host:port) instead of one it starts."
    )
    engine: str = option("mocker", "Engine of the worker it starts.", choices=tuple(ENGINES))
    input_lengths: list[str] = option(
        default_factory=lambda: ["128", "512", "2048", "8192"],
        help="Prompt lengths of the prefill sweep.",
    )
    concurrency: list[str] = option(
        default_factory=lambda: ["1", "2", "4", "8"],
        help="Prompts sent at once in the prefill sweep.",
    )
    context_lengths: list[str] = option(
        default_factory=lambda: ["512", "2048", "8192"], help="Prompt lengths of the decode sweep."
    )
    batch_sizes: list[str] = option(
        default_factory=lambda: ["1", "4", "16", "64", "128"], help="Requests decoding together."
    )
    decode_tokens: int = option(64, "Tokens each request of the decode sweep generates.")
    kv_capacity_tokens: int = option(
        0, "Tokens the worker's KV cache holds; points beyond 90% of it are skipped (0 = try all)."
    )
    log_level: str = option("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def __post_init__(self) -> None:
        self.plan()  # every list parses
        if self.decode_tokens < 4:
            raise ValueError(f"--decode-tokens must be at least 4, got {self.decode_tokens}")
        if self.kv_capacity_tokens < 0:
            raise ValueError("--kv-capacity-tokens must be >= 0")

    def plan(self, worker_args: Sequence[str] = ()) -> SweepPlan:
        return SweepPlan(
            input_lengths=_ints(self.input_lengths, "--input-lengths"),
            concurrency=_ints(self.concurrency, "--concurrency"),
            context_lengths=_ints(self.context_lengths, "--context-lengths"),
            batch_sizes=_ints(self.batch_sizes, "--batch-sizes"),
            decode_tokens=self.decode_tokens,
            kv_capacity_tokens=self.kv_capacity_tokens,
            settings={
                "engine": self.engine,
                "endpoint": self.endpoint,
                "worker_args": list(worker_args),
                "decode_tokens": self.decode_tokens,
            },
        )


async def _sweep(endpoint: str, config: ProfileConfig, worker_args: Sequence[str]) -> None:
    profiler = Profiler(endpoint)
    try:
        started = time.monotonic()
        profile = await profiler.run(config.plan(worker_args), config.engine)
    finally:
        await profiler.close()
    profile.save(config.output)
    log.info("profile written path=%s prefill_points=%d decode_points=%d seconds=%.1f",
             config.output, len(profile.prefill), len(profile.decode),
             time.monotonic() - started)  # fmt: skip


async def _with_own_worker(config: ProfileConfig, worker_args: list[str]) -> int:
    try:
        infra = await asyncio.to_thread(LocalInfra.start)
    except InfraError as exc:
        log.error("%s", exc)
        return 1
    log_path = Path(tempfile.mkdtemp(prefix="tandem-profile-")) / "worker.log"
    discovery = Discovery(infra.etcd_url, "profile")
    proc: asyncio.subprocess.Process | None = None
    try:
        argv = ["--engine", config.engine, "--nats", infra.nats_url, "--etcd", infra.etcd_url,
                "--namespace", "profile", "--host", "127.0.0.1", *worker_args]  # fmt: skip
        out = await asyncio.to_thread(open, log_path, "wb")
        with out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tandem.worker", *argv, stdout=out, stderr=out
            )
        await discovery.start()
        workers = await discovery.instance_set("worker").start()
        exited = asyncio.create_task(proc.wait())
        registered = asyncio.create_task(workers.wait_for(lambda found: bool(found), 300))
        await asyncio.wait({exited, registered}, return_when=asyncio.FIRST_COMPLETED)
        if not registered.done() or registered.exception() is not None:
            registered.cancel()
            log.error("the worker did not start (exit %s); its log: %s", proc.returncode, log_path)
            return 1
        exited.cancel()
        info = next(iter(workers))
        if not config.kv_capacity_tokens and info.total_blocks and info.block_size:
            # What it registers: points beyond its KV cache would only measure preemption.
            config = replace(config, kv_capacity_tokens=info.total_blocks * info.block_size)
        log.info("profiling a %s worker at %s kv_capacity_tokens=%d (log %s)", config.engine,
                 info.endpoint, config.kv_capacity_tokens, log_path)  # fmt: skip
        await _sweep(info.endpoint, config, worker_args)
        return 0
    finally:
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await proc.wait()
        await discovery.close()
        await asyncio.to_thread(infra.stop)


def profile_main(argv: Sequence[str]) -> int:
    config, worker_args = parse_known_config(ProfileConfig, argv, prog="tandem profile")
    setup_logging(config.log_level, component="profile")
    if config.endpoint and worker_args:
        print(f"tandem profile: unknown flags {' '.join(worker_args)} (with --endpoint no worker "
              "is started to pass them to)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        if config.endpoint:
            asyncio.run(_sweep(config.endpoint, config, ()))
            return 0
        return asyncio.run(_with_own_worker(config, worker_args))
    except grpc.aio.AioRpcError as exc:
        log.error("profile failed: the worker answered %s: %s", exc.code().name, exc.details())
        return 1
    except (RuntimeError, OSError) as exc:
        log.error("profile failed: %s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
