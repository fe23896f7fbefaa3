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

With `--concurrency N` the records are sent closed loop instead, as
`bench/disagg.py` sends: N streams in flight, each sending its next record
when its previous one ends (timestamps ignored), the streams' first sends
spread over `--ramp-up` seconds.

With `--prefill-workers P --decode-workers D` (instead of `--workers`) the
fleet is disaggregated (sim_disagg.py): the router routes over the decode
workers, the frontend's conditional rule (`--max-local-prefill-length`,
`--max-prefill-queue-size`) sends long prompts to a prefill worker picked by a
router of their own, and their KV moves at `--kv-transfer-bandwidth`.

The result is the `ReplayResult` the live replay prints (trace_summary.py);
`run_fleet` returns the whole `FleetSimulation`, which also keeps each
request's TTFT and mean ITL (`timings`, for goodput) and, disaggregated, its
`disagg`: the rule's decisions by reason and the KV moved.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from tandem.router.api import NoWorkersError, RouterBusyError
from tandem.router.kv_router import KvRouter
from tandem.router.policy_registry import RouterDeps, make_router
from tandem.router.worker_view import StaticWorkerView
from tandem.worker.engine import EngineError, EngineRequest, SamplingConfig
from tandem.worker.mocker.sequence import MockSequence

from .fleet_config import FleetConfig
from .mooncake_trace import TraceRecord, prompt_token_ids
from .sim_disagg import SimDisagg
from .sim_loop import run_simulated
from .sim_prompts import TraceHashes
from .sim_worker import SimWorker, load_sink, worker_info
from .trace_summary import ReplayResult


class RequestTiming(NamedTuple):
    """One finished request's latencies, for goodput."""

    ttft: float
    mean_itl: float  # (last token - first token) / gaps; 0 for one token


@dataclass(slots=True)
class _InFlight:
    request_id: str
    arrived_at: float
    first_token_at: float = -1.0
    last_token_at: float = -1.0


class FleetSimulation:
    """Owns one simulated run: the router, the workers, the requests in flight and the figures.

    Build it inside the simulated loop (it reads the loop's clock), then `await run(records)`.
    """

    def __init__(self, config: FleetConfig, label: str = "") -> None:
        self.config = config
        self.result = ReplayResult(label or config.routing.router_mode)
        self.timings: list[RequestTiming] = []  # per finished request, in finishing order
        self._loop = asyncio.get_running_loop()
        if config.is_disaggregated:
            ids = [f"d{i}" for i in range(config.decode_workers)]
            infos = [worker_info(iid, config.mocker, i, role="decode") for i, iid in enumerate(ids)]
        else:
            ids = [f"w{i}" for i in range(config.workers)]
            infos = [worker_info(iid, config.mocker, i) for i, iid in enumerate(ids)]
        self.router = make_router(
            config.routing,
            StaticWorkerView(infos),
            RouterDeps(clock=self._loop.time, rng=random.Random(config.seed)),
        )
        kv = self.router if isinstance(self.router, KvRouter) else None
        self.workers = {
            iid: SimWorker(
                iid,
                config.mocker,
                self._on_output,
                # --no-kv-events: the router predicts caches from its own decisions instead.
                index=kv.index if kv is not None and kv.follower is not None else None,
                on_load=load_sink(kv) if kv is not None else None,
                load_report_interval=config.load_report_interval,
            )
            for iid in ids
        }
        self.disagg = (
            SimDisagg(
                settings=config.disagg_settings,
                routing=config.routing,
                mocker=config.mocker,
                decode_infos=infos,
                num_prefill_workers=config.prefill_workers,
                seed=config.seed,
                load_report_interval=config.load_report_interval,
                on_output=self._on_output,
            )
            if config.is_disaggregated
            else None
        )
        self._rng_seed = random.Random(config.seed).getrandbits(64)
        # The prompts' block hashes, kept per trace block, as every worker's pool hashes
        # them (None: the workers hash them).
        pool = next(iter(self.workers.values())).engine.scheduler.block_manager
        self._hashes = (
            TraceHashes(config.block_tokens, pool.block_size, pool.hash_seed)
            if config.block_tokens % pool.block_size == 0
            else None
        )
        self._in_flight: dict[MockSequence, _InFlight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._num_open = 0
        self._all_sent = False
        self._all_done = asyncio.Event()
        # Closed loop: a stream's slot, taken before a send and given back when it ends.
        self._slots = asyncio.Semaphore(config.concurrency) if config.concurrency else None
        self._first_sent_at = 0.0
        self._last_done_at = 0.0

    async def run(self, records: Iterable[TraceRecord]) -> ReplayResult:
        """Replay `records` (in arrival order) and return the figures once every answer is in."""
        await self.router.start()
        for worker in self.workers.values():
            worker.start()
        if self.disagg is not None:
            await self.disagg.start()
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
            if self.disagg is not None:
                await self.disagg.stop()
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
            if self._slots is not None:
                await self._slots.acquire()
                if n < self.config.concurrency and self.config.ramp_up:
                    delay = start + n * self.config.ramp_up / self.config.concurrency
                    await asyncio.sleep(delay - loop.time())
            else:
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
        """One request, as the frontend runs it: route, decide, hand it to the chosen worker."""
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
        prefill_id = None
        if self.disagg is not None:
            prefill_id = await self.disagg.decide(request_id, route, prompt)
        # Sampled tokens (not greedy): no per-prompt generator to seed; `rng` seeds them.
        sampling = SamplingConfig(temperature=1.0, max_tokens=record.output_length, ignore_eos=True)
        request = EngineRequest(request_id, prompt, sampling)
        worker = self.workers[route.instance_id]
        hashes = self._hashes.prompt_hashes(record, prompt) if self._hashes is not None else None
        try:
            if prefill_id is None:
                seq = worker.submit(request, random.Random(self._rng_seed ^ n), hashes)
            else:
                assert self.disagg is not None
                seq = self.disagg.submit_remote(
                    worker, request, self._rng_seed ^ n, prefill_id, hashes
                )
        except EngineError as exc:
            self.router.free(request_id)
            if self.disagg is not None:
                self.disagg.prefill_done(request_id)
            return self._failed(f"refused {type(exc).__name__}")
        self._in_flight[seq] = _InFlight(request_id, arrived_at)

    def _on_output(self, seq: MockSequence, now: float) -> None:
        req = self._in_flight[seq]
        result = self.result
        if req.last_token_at < 0:
            result.ttft.append(now - req.arrived_at)
            req.first_token_at = now
            self.router.prefill_done(req.request_id)
            if self.disagg is not None:
                self.disagg.prefill_done(req.request_id)
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
            gaps = usage.completion_tokens - 1
            mean_itl = (now - req.first_token_at) / gaps if gaps > 0 else 0.0
            self.timings.append(RequestTiming(req.first_token_at - req.arrived_at, mean_itl))
            self._closed()

    def _failed(self, reason: str) -> None:
        self.result.errors[reason] += 1
        self._closed()

    def _closed(self) -> None:
        self._num_open -= 1
        self._last_done_at = self._loop.time()
        if self._slots is not None:
            self._slots.release()
        self._check_done()

    def _check_done(self) -> None:
        if self._all_sent and not self._num_open:
            self._all_done.set()


def run_fleet(
    records: Iterable[TraceRecord], config: FleetConfig, label: str = ""
) -> FleetSimulation:
    """Replay `records` on a simulated fleet and return the finished simulation (synchronous:
    runs its own simulated-time loop); its `result` is what `simulate` returns."""

    sims: list[FleetSimulation] = []

    async def main() -> None:
        sim = FleetSimulation(config, label)
        sims.append(sim)
        # Not the task's result: asyncio may repr a finished task, and this one is large.
        await sim.run(records)

    run_simulated(main())
    return sims[0]


def simulate(records: Iterable[TraceRecord], config: FleetConfig, label: str = "") -> ReplayResult:
    """Replay `records` on a simulated fleet (synchronous: runs its own simulated-time loop)."""
    return run_fleet(records, config, label).result
