"""Disaggregated pools in the fleet simulator: the prefill workers, their router, the rule, the transfer.

One request routed to a decode worker, as the live system serves it
(services/worker/disagg/__init__.py), on simulated time:
1. The fleet's router (over the decode workers) picked the worker and its
   overlap; the frontend's own `Disaggregation.decide` applies the
   conditional rule (its reasons counted in a `FrontendMetrics` of its own;
   the queue depth read every 0.1 s, plus the jobs it sent since) and picks a
   prefill worker with a second router of the same policy over the prefill
   pool (its index fed by the prefill workers' KV events, its load by their
   load reports).
2. Remote: the decode worker parks the request with all its blocks
   allocated; its job joins the queue (it stays there until its transfer is
   over, as a work-queue job does until the prefill worker acks it).
3. The prefill worker runs prefill only (first token sampled there, from the
   same generator the decode worker skips it from), its blocks pinned.
4. The transfer of the blocks the decode worker lacks takes what the prefill
   worker's `SimulatedTransport` sleeps (the mocker's own: blocks x
   `--kv-bytes-per-token` x block size / `--kv-transfer-bandwidth`); then the
   pinned blocks are released and the decode worker resumes the sequence
   remote (first token out, decode scheduled).
A request the decode worker cannot park (no blocks now) runs there, as live.

Not modelled: NATS and gRPC hops (no latency), the remote-prefill timeout and
redelivery (nothing fails), the prefill worker's cap of jobs in flight (64).
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from tandem.frontend.disagg import Disaggregation, DisaggSettings
from tandem.frontend.metrics import FrontendMetrics
from tandem.router.api import BaseRouter, RouteResult
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.policy_registry import RouterDeps, make_router
from tandem.router.worker_view import StaticWorkerView
from tandem.runtime.block_hash import BlockHashes
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.prefill_queue import PrefillQueue
from tandem.worker.engine import EngineRequest
from tandem.worker.mocker import MockerConfig
from tandem.worker.mocker.sequence import MockSequence

from .sim_loop import SimulatedTimeLoop
from .sim_worker import OutputCallback, SimWorker, load_sink, worker_info

if TYPE_CHECKING:
    from tandem.frontend.models import ServedModel


class _JobQueue:
    """Stands in for the JetStream work queue: the depth the rule polls (queued and running)."""

    def __init__(self) -> None:
        self.num_jobs = 0

    async def depth(self, model: str) -> int:
        return self.num_jobs


@dataclass(frozen=True, slots=True)
class _Model:
    """What the rule reads of a served model: its name and its workers' registrations."""

    name: str
    workers: Mapping[str, InstanceInfo]


@dataclass(slots=True, eq=False)
class _Job:
    """One remote prefill: the parked sequence and where its KV goes."""

    request_id: str
    decode: SimWorker
    decode_seq: MockSequence
    prefill: SimWorker
    num_cached_tokens: int  # leading prompt tokens the decode worker holds (whole blocks)
    dst_block_ids: list[int]


class SimDisagg:
    """Owns the prefill pool (workers and router), the rule and the remote prefills in flight."""

    def __init__(
        self,
        *,
        settings: DisaggSettings,
        routing: RoutingConfig,
        mocker: MockerConfig,
        decode_infos: list[InstanceInfo],
        num_prefill_workers: int,
        seed: int,
        load_report_interval: float,
        on_output: OutputCallback,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        ids = [f"p{i}" for i in range(num_prefill_workers)]
        infos = [worker_info(iid, mocker, i, role="prefill") for i, iid in enumerate(ids)]
        self.router = make_router(
            routing,
            StaticWorkerView(infos),
            RouterDeps(clock=loop.time, rng=random.Random(f"{seed}:prefill")),
        )
        kv = self.router if isinstance(self.router, KvRouter) else None
        self.workers = {
            iid: SimWorker(
                iid,
                mocker,
                self._prefilled,
                index=kv.index if kv is not None and kv.follower is not None else None,
                on_load=load_sink(kv) if kv is not None else None,
                load_report_interval=load_report_interval,
            )
            for iid in ids
        }
        self.transports = {iid: w.engine.kv_transport() for iid, w in self.workers.items()}
        self.metrics = FrontendMetrics()
        self._queue = _JobQueue()
        self._rule = Disaggregation(
            settings, self.metrics, self._prefill_router, cast(PrefillQueue, self._queue)
        )
        self._model = _Model(mocker.model_name, {info.instance_id: info for info in decode_infos})
        self._on_output = on_output
        self._call_at: Callable[[float, Callable[[], None]], object] = (
            loop.call_at_bare if isinstance(loop, SimulatedTimeLoop) else loop.call_at
        )
        self._jobs: dict[MockSequence, _Job] = {}  # prefill-side sequence -> its job
        self._routed: set[str] = set()  # requests the prefill router counts
        self.num_unparked = 0  # remote decisions the decode worker ran locally (no blocks)
        self.transfer_bytes = 0
        self.transfer_seconds = 0.0

    @property
    def num_queued(self) -> int:
        """Prefill jobs queued or running (the rule's queue depth)."""
        return self._queue.num_jobs

    @property
    def decisions(self) -> collections.Counter[str]:
        """The rule's decisions as `decision:reason` (the frontend's metric's labels)."""
        found: collections.Counter[str] = collections.Counter()
        for metric in self.metrics.disagg_decisions.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    key = f"{sample.labels['decision']}:{sample.labels['reason']}"
                    found[key] += int(sample.value)
        return found

    async def start(self) -> None:
        await self.router.start()
        for worker in self.workers.values():
            worker.start()
        await self._rule.start()

    async def stop(self) -> None:
        await self._rule.stop()
        for worker in self.workers.values():
            await worker.stop()
        await self.router.stop()

    async def decide(self, request_id: str, route: RouteResult, prompt: list[int]) -> str | None:
        """The prefill worker for the prompt routed to `route`, or None: the decode worker's."""
        model = cast("ServedModel", self._model)
        remote = await self._rule.decide(request_id, model, route, prompt)
        if remote is None:
            return None
        self._routed.add(request_id)
        return remote.instance_id

    def submit_remote(
        self,
        decode: SimWorker,
        request: EngineRequest,
        seed: int,
        prefill_id: str,
        hashes: BlockHashes | None = None,
    ) -> MockSequence:
        """Park `request` on `decode` and queue its prefill on `prefill_id`; the decode-side
        sequence (run there at once if it cannot be parked). EngineError if refused.
        `hashes`: the prompt's block hashes, if known (`SimWorker.submit`)."""
        seq = decode.submit_parked(request, random.Random(seed), hashes)
        if seq is None:
            self.num_unparked += 1
            return decode.submit(request, random.Random(seed), hashes)
        assert seq.table is not None
        num_held = seq.table.num_cached_tokens // decode.engine.block_size
        prefill = self.workers[prefill_id]
        prefill_seq = prefill.prefill_only(request, random.Random(seed), hashes)
        self._jobs[prefill_seq] = _Job(
            request.request_id,
            decode,
            seq,
            prefill,
            seq.table.num_cached_tokens,
            seq.table.block_ids[num_held:],
        )
        self._queue.num_jobs += 1
        return seq

    def prefill_done(self, request_id: str) -> None:
        """The request's first token is out: its prefill worker is done with it (idempotent)."""
        if request_id in self._routed:
            self._routed.discard(request_id)
            self.router.free(request_id)

    # -- internals ---------------------------------------------------------------

    async def _prefill_router(self, model: str) -> BaseRouter:
        return self.router

    def _prefilled(self, seq: MockSequence, now: float) -> None:
        """A prefill-only sequence sampled its one token: send the blocks the decode worker lacks."""
        job = self._jobs.pop(seq)
        assert seq.is_finished and seq.table is not None
        src = seq.table.block_ids[job.num_cached_tokens // job.prefill.engine.block_size :]
        if len(src) != len(job.dst_block_ids):
            raise RuntimeError(f"{len(src)} blocks to send into {len(job.dst_block_ids)}")
        transport = self.transports[job.prefill.instance_id]
        seconds = transport.seconds_for(len(src))
        self.transfer_bytes += len(src) * transport.bytes_per_block
        self.transfer_seconds += seconds
        first_token = seq.token_ids[-1]

        def arrived() -> None:
            job.prefill.release(seq)
            self._queue.num_jobs -= 1
            if job.decode.resume_remote(job.decode_seq, first_token):
                self._on_output(job.decode_seq, self._loop.time())

        self._call_at(now + seconds, arrived)
