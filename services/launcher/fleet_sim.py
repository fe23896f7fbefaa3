"""The fleet simulator: a trace through the real router and N simulated mocker workers, in one process.

`simulate(records, config)` replays Mooncake-format records open loop, as
`bench/trace_replay.py` does against a live cluster, on simulated time
(sim_loop.py): each record arrives at its timestamp divided by
`--time-scale`; the real router (`make_router`: index, cost model, active
load, busy threshold and wait queue) routes it; the chosen `SimWorker`
(sim_worker.py: the mocker's real scheduler and block manager) runs it. As
the frontend does, the router is told `prefill_done` at the first token and
`free` at the end; as workers do, each worker's KV events reach the router's
index (at the publisher's flush pace) and its `LoadReporter` reports load
on change and every `--load-report-interval`. No CPU time is simulated:
TTFT and ITL are the step-time model's. Same seed, same figures.

The result is the `ReplayResult` the live replay prints (trace_summary.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass

from tandem.router.api import NoWorkersError, RouterBusyError
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.policy_registry import RouterDeps, make_router
from tandem.router.worker_view import StaticWorkerView
from tandem.runtime.config import option
from tandem.runtime.wire.kv_events_pb2 import LoadMetrics
from tandem.worker.config import LOAD_REPORT_INTERVAL_SECONDS
from tandem.worker.engine import EngineError, EngineRequest, SamplingConfig
from tandem.worker.mocker import MockerConfig
from tandem.worker.mocker.sequence import MockSequence

from .mooncake_trace import DEFAULT_BLOCK_TOKENS, TraceRecord, prompt_token_ids
from .sim_loop import run_simulated
from .sim_worker import SimWorker, worker_info
from .trace_summary import ReplayResult


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """A simulated fleet: how many mocker workers, how they are configured and routed, and how
    the trace is replayed on them."""

    workers: int = option(8, "Simulated mocker workers.")
    time_scale: float = option(
        1.0,
        "Trace time is divided by this (4 = four times as fast as recorded), "
        "as --speedup of bench/trace_replay.py.",
    )
    max_requests: int = option(0, "Replay only the first N records of the trace (0 = all).")
    block_tokens: int = option(
        DEFAULT_BLOCK_TOKENS, "Prompt tokens one hash id of the trace stands for (Mooncake: 512)."
    )
    seed: int = option(
        0, "Seed of the prompts' token ids, the router's tie-breaks and the generated tokens."
    )
    load_report_interval: float = option(
        LOAD_REPORT_INTERVAL_SECONDS,
        "Seconds between a worker's load reports when nothing changes (the workers' flag).",
    )
    drain_timeout: float = option(
        600.0, "Simulated seconds to wait for answers after the last arrival; the rest are errors."
    )
    routing: RoutingConfig = option(
        help="How the router picks workers.", default_factory=RoutingConfig
    )
    mocker: MockerConfig = option(
        help="Every simulated worker's mocker settings.", default_factory=MockerConfig
    )

    def __post_init__(self) -> None:
        if self.workers <= 0:
            raise ValueError("workers must be positive")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.max_requests < 0:
            raise ValueError("max_requests must be >= 0 (0 = all)")
        if self.block_tokens < 2:
            raise ValueError("block_tokens must be at least 2")
        if self.load_report_interval <= 0 or self.drain_timeout <= 0:
            raise ValueError("load_report_interval and drain_timeout must be positive")


@dataclass(slots=True)
class _InFlight:
    request_id: str
    arrived_at: float
    last_token_at: float = -1.0


class FleetSimulation:
    """Owns one simulated run: the router, the workers, the requests in flight and the figures.

    Build it inside the simulated loop (it reads the loop's clock), then `await run(records)`.
    """

    def __init__(self, config: FleetConfig, label: str = "") -> None:
        self.config = config
        self.result = ReplayResult(label or config.routing.router_mode)
        self._loop = asyncio.get_running_loop()
        ids = [f"w{i}" for i in range(config.workers)]
        view = StaticWorkerView([worker_info(iid, config.mocker, i) for i, iid in enumerate(ids)])
        self.router = make_router(
            config.routing, view, RouterDeps(clock=self._loop.time, rng=random.Random(config.seed))
        )
        kv = self.router if isinstance(self.router, KvRouter) else None
        self._kv = kv
        self.workers = {
            iid: SimWorker(
                iid,
                config.mocker,
                self._on_output,
                # --no-kv-events: the router predicts caches from its own decisions instead.
                index=kv.index if kv is not None and kv.follower is not None else None,
                on_load=self._on_load if kv is not None else None,
                load_report_interval=config.load_report_interval,
            )
            for iid in ids
        }
        self._rng_seed = random.Random(config.seed).getrandbits(64)
        self._in_flight: dict[MockSequence, _InFlight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._num_open = 0
        self._all_sent = False
        self._all_done = asyncio.Event()
        self._first_sent_at = 0.0
        self._last_done_at = 0.0

    async def run(self, records: Iterable[TraceRecord]) -> ReplayResult:
        """Replay `records` (in arrival order) and return the figures once every answer is in."""
        await self.router.start()
        for worker in self.workers.values():
            worker.start()
        try:
            await self._send(records)
            try:
                async with asyncio.timeout(self.config.drain_timeout):
                    await self._all_done.wait()
            except TimeoutError:
                self.result.errors["unfinished at drain timeout"] += self._num_open
        finally:
            for task in self._tasks:
                task.cancel()
            for worker in self.workers.values():
                await worker.stop()
            await self.router.stop()
        self.result.wall = self._last_done_at - self._first_sent_at
        return self.result

    async def _send(self, records: Iterable[TraceRecord]) -> None:
        loop = self._loop
        origin: float | None = None
        start = self._first_sent_at = loop.time()
        for n, record in enumerate(records):
            if self.config.max_requests and n >= self.config.max_requests:
                break
            if origin is None:
                origin = record.arrival_s
            delay = start + (record.arrival_s - origin) / self.config.time_scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._num_open += 1
            task = loop.create_task(self._serve(n, record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._all_sent = True
        self._check_done()

    async def _serve(self, n: int, record: TraceRecord) -> None:
        """One request, as the frontend runs it: route, then hand it to the chosen worker."""
        result, config = self.result, self.config
        request_id = f"r{n}"
        arrived_at = self._loop.time()
        prompt = prompt_token_ids(
            record, config.block_tokens, config.mocker.vocab_size, config.seed
        )
        result.sent += 1
        result.late.append(0.0)  # simulated sends are never behind schedule
        try:
            route = await self.router.route(request_id, prompt, max_tokens=record.output_length)
        except (NoWorkersError, RouterBusyError) as exc:
            return self._failed(f"router {type(exc).__name__}")
        # Sampled tokens (not greedy): no per-prompt generator to seed; `rng` seeds them.
        sampling = SamplingConfig(temperature=1.0, max_tokens=record.output_length, ignore_eos=True)
        rng = random.Random(self._rng_seed ^ n)
        try:
            seq = self.workers[route.instance_id].submit(
                EngineRequest(request_id, prompt, sampling), rng
            )
        except EngineError as exc:
            self.router.free(request_id)
            return self._failed(f"refused {type(exc).__name__}")
        self._in_flight[seq] = _InFlight(request_id, arrived_at)

    def _on_output(self, seq: MockSequence, now: float) -> None:
        req = self._in_flight[seq]
        result = self.result
        if req.last_token_at < 0:
            result.ttft.append(now - req.arrived_at)
            self.router.prefill_done(req.request_id)
        else:
            result.itl.append(now - req.last_token_at)
        req.last_token_at = now
        if seq.is_finished:
            del self._in_flight[seq]
            self.router.free(req.request_id)
            usage = seq.usage()
            result.ok += 1
            result.output_tokens += usage.completion_tokens
            result.prompt_tokens += usage.prompt_tokens
            result.cached_tokens += usage.cached_tokens
            self._closed()

    def _failed(self, reason: str) -> None:
        self.result.errors[reason] += 1
        self._closed()

    def _closed(self) -> None:
        self._num_open -= 1
        self._last_done_at = self._loop.time()
        self._check_done()

    def _check_done(self) -> None:
        if self._all_sent and not self._num_open:
            self._all_done.set()

    def _on_load(self, metrics: LoadMetrics) -> None:
        # What KvRouter does with each LoadMetrics it receives.
        assert self._kv is not None
        load = self._kv.load
        load.report(
            metrics.instance_id,
            metrics.active_blocks,
            metrics.pending_prefill_tokens,
            metrics.total_blocks,
        )
        load.expire()


def simulate(records: Iterable[TraceRecord], config: FleetConfig, label: str = "") -> ReplayResult:
    """Replay `records` on a simulated fleet (synchronous: runs its own simulated-time loop)."""

    results: list[ReplayResult] = []

    async def main() -> None:
        # Not the task's result: asyncio may repr a finished task, and this one is large.
        results.append(await FleetSimulation(config, label).run(records))

    run_simulated(main())
    return results[0]


@dataclass(frozen=True, kw_only=True)
class SimulateConfig(FleetConfig):
    """tandem simulate: replay a Mooncake-format trace on a simulated fleet, in one process.

    The real router (index, cost model, active load, busy threshold) and N
    mocker workers' real schedulers and block managers run on a simulated
    clock: deterministic, no CPU time in the figures, much faster than the
    trace. Prints the table bench/trace_replay.py prints for a live cluster.
    Routing flags are the frontend's; mocker flags are the workers'.
    """

    trace: str = option("", "Mooncake-format JSONL trace to replay (required).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.trace:
            raise ValueError("--trace is required")
