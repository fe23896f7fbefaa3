"""The mocker engine: the real BlockManager and Scheduler, simulated step time, no model.

Everything runs on the event loop: a step does no compute, it only sleeps the
modelled step time, so one asyncio task per engine is enough and hundreds of
mocker workers fit on one machine. After each step the loop hands every
sampled sequence's output to its request's listener (`PushEngine`): no task
wakes per request and token.

Generated tokens are pseudo-random ids in [0, vocab_size), never EOS: without
a stop token a request runs to `max_tokens` (or the context length), which is
what load tests want. `stop_token_ids` are honoured if drawn.

Disaggregated roles (`disagg.engine_hooks.DisaggEngine`): a decode worker parks a
request with its blocks allocated until the KV "arrives"; a prefill worker runs
prefill only and pins the blocks until the simulated transfer
(`SimulatedTransport`, bytes / `--kv-transfer-bandwidth`) is over. Tokens are a
function of the prompt, so a request served disaggregated gets the tokens it
would have got aggregated.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from tandem.runtime.model_card import ModelCard
from tandem.runtime.tasks import cancel_and_wait

from ..admission import EngineLimits, admit
from ..disagg.engine_hooks import ParkedRequest, PrefillResult
from ..disagg.sim_transport import SimulatedTransport
from ..engine import (
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineStats,
    OutputListener,
    PushEngine,
    TokenLogprob,
)
from ..kv_event_sink import KvEventSink
from ..kvbm.build import simulated_kvbm
from ..kvbm.manager import Kvbm, KvbmStats
from ..scheduler import ScheduledBatch, Scheduler
from .config import MockerConfig
from .sequence import MockSequence, token_rng

log = logging.getLogger(__name__)
_EMA = 0.1  # weight of the newest step in the step-time averages


class MockerEngine(PushEngine):
    """Owns the simulated KV cache, the scheduler and the step loop task."""

    def __init__(self, config: MockerConfig, sink: KvEventSink | None = None) -> None:
        self.config = config
        self.block_size = config.scheduler.kv_cache_block_size
        self.total_blocks = config.num_kv_blocks
        self.model_name = config.model_name
        self.scheduler: Scheduler[MockSequence] = Scheduler.with_blocks(
            config.scheduler, config.num_kv_blocks, sink
        )
        self.limits = EngineLimits(
            context_length=config.max_model_len,
            vocab_size=config.vocab_size,
            eos_token_ids=(config.eos_token_id,),
        )
        self._sink = sink
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._prefill_avg = 0.0
        self._decode_avg = 0.0
        self.kvbm: Kvbm | None = None

    @property
    def context_length(self) -> int:
        return self.limits.context_length

    @property
    def model_path(self) -> str:
        return self.config.resolved_model_path

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.limits.eos_token_ids

    def model_card(self) -> ModelCard:
        return dataclasses.replace(super().model_card(), vocab_size=self.config.vocab_size)

    @property
    def kv_block_bytes(self) -> int:
        """The simulated size of one KV block, what the tiers and transfers move."""
        return self.config.kv_bytes_per_token * self.block_size

    async def start(self) -> None:
        cfg = self.config
        if cfg.kvbm.enabled and self.kvbm is None:
            self.kvbm = simulated_kvbm(
                cfg.kvbm,
                cfg.num_kv_blocks,
                self.kv_block_bytes,
                cfg.kvbm_host_bandwidth,
                cfg.kvbm_disk_bandwidth,
                cfg.speedup_ratio,
                self._sink,
                self._wake.set,
            )
            self.scheduler.block_manager.attach_tiers(self.kvbm)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mocker-steps")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        sched = self.scheduler
        ended = [*sched.running, *sched.waiting, *sched.parked, *sched.onboarding]
        for seq in ended:
            sched.finish(seq, "abort")
        for seq in list(sched.pinned):
            sched.release(seq)
        self._deliver(ended)
        if self.kvbm is not None:
            self.kvbm.close()

    def submit(self, request: EngineRequest, listener: OutputListener) -> Callable[[], None]:
        seq = self.new_sequence(request)
        seq.listener = listener
        if seq.is_finished:  # a migrated request with nothing left: its one final output
            asyncio.get_running_loop().call_soon(self._deliver, [seq])
        else:
            self.scheduler.add(seq)
            self._wake.set()

        def abort() -> None:
            seq.listener = None
            self.scheduler.finish(seq, "abort")  # no-op once it has finished

        return abort

    def stats(self) -> EngineStats:
        return self.scheduler.stats(self._prefill_avg, self._decode_avg)

    def kvbm_stats(self) -> KvbmStats | None:
        return self.kvbm.stats() if self.kvbm is not None else None

    # -- disaggregated serving ---------------------------------------------------

    def submit_parked(
        self, request: EngineRequest, listener: OutputListener
    ) -> tuple[Callable[[], None], ParkedRequest | None]:
        seq = self.new_sequence(request)
        seq.listener = listener
        parked = None
        if seq.is_finished:
            asyncio.get_running_loop().call_soon(self._deliver, [seq])
        elif self.scheduler.park(seq):
            assert seq.table is not None
            num_held = seq.table.num_cached_tokens // self.block_size
            parked = ParkedRequest(
                seq.request_id, seq.table.num_cached_tokens, seq.table.block_ids[num_held:], seq
            )
        else:
            self.scheduler.add(seq)
            self._wake.set()

        def abort() -> None:
            seq.listener = None
            self.scheduler.finish(seq, "abort")

        return abort, parked

    def resume_parked(
        self, parked: ParkedRequest, first_token: int | None, logprob: TokenLogprob | None
    ) -> bool:
        seq: MockSequence = parked.handle
        sched = self.scheduler
        if first_token is None:
            resumed = sched.resume_local(seq)
        else:
            if seq not in sched.parked:
                return False
            seq.skip_token()
            if logprob is not None and seq.params.logprobs:
                seq.pending_logprobs.append(logprob)
            resumed = sched.resume_remote(seq, first_token)
            self._deliver([seq])
        if resumed:
            self._wake.set()
        return resumed

    async def prefill_only(self, request: EngineRequest) -> PrefillResult:
        seq = self.new_sequence(request)
        if seq.is_finished:
            raise EngineError("nothing to prefill: the request has no tokens left to generate")
        seq.max_new_tokens = 1
        seq.pin_blocks = True
        done: asyncio.Future[EngineOutput] = asyncio.get_running_loop().create_future()

        def on_output(out: EngineOutput) -> None:
            if out.finish_reason is not None and not done.done():
                done.set_result(out)

        seq.listener = on_output
        self.scheduler.add(seq)
        self._wake.set()
        try:
            out = await done
        except BaseException:
            seq.listener = None
            self.scheduler.finish(seq, "abort")
            self.scheduler.release(seq)
            raise
        if out.finish_reason not in ("stop", "length") or not out.token_ids or seq.table is None:
            self.scheduler.release(seq)
            raise EngineError(f"prefill ended with {out.finish_reason}: {out.error or ''}")
        return PrefillResult(
            first_token=out.token_ids[0],
            logprob=out.logprobs[0] if out.logprobs else None,
            block_ids=list(seq.table.block_ids),
            release=lambda: self.scheduler.release(seq),
        )

    def kv_transport(self) -> SimulatedTransport:
        cfg = self.config
        return SimulatedTransport(
            self.kv_block_bytes,
            cfg.kv_transfer_bandwidth,
            cfg.speedup_ratio,
        )

    def new_sequence(self, request: EngineRequest) -> MockSequence:
        """A sequence for `request` under the worker's request rules, not yet scheduled."""

        def new(**fields: Any) -> MockSequence:
            # Built only once the request passed the rules (token_rng needs valid ids).
            return MockSequence(
                **fields,
                rng=token_rng(request),
                vocab_size=self.config.vocab_size,
                banned_ids=frozenset(self.limits.eos_token_ids),
            )

        return admit(request, self.limits, new)

    def step_seconds(self, batch: ScheduledBatch[MockSequence]) -> float:
        """Simulated wall time of `batch` under the step-time model."""
        return self.config.step_seconds(
            batch.num_prefill_tokens,
            len(batch.decodes),
            sum(s.num_computed_tokens + 1 for s in batch.decodes),  # context read
        )

    # -- internals -------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.scheduler
        deadline = loop.time()
        while True:
            if not sched.has_work:
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
            batch = sched.schedule()
            if not batch:
                # Nothing fits this step (only after a preemption); go again at once.
                await asyncio.sleep(0)
                continue
            seconds = self.step_seconds(batch)
            if self.kvbm is not None:
                self.kvbm.prefilled(batch.num_prefill_tokens, seconds)  # recomputing's cost
                seconds += self.kvbm.take_stall_seconds()  # copies the step waited for
            self._record(batch, seconds)
            # Sleep to an absolute deadline so scheduling overhead and timer
            # rounding do not slow the simulated clock; never build up debt.
            deadline += seconds
            await asyncio.sleep(max(deadline - loop.time(), 0.0))
            deadline = max(deadline, loop.time() - seconds)
            # Requests aborted during the sleep draw a token nobody reads; postprocess drops it.
            sampled = batch.sampled
            sched.postprocess(batch, [seq.draw_token() for seq in sampled])
            self._deliver(sampled)

    def _deliver(self, seqs: list[MockSequence]) -> None:
        """Hand each sequence's new output to its listener (the last one detaches it)."""
        for seq in seqs:
            listener = seq.listener
            # has_output, inlined: this runs for every sequence of every step.
            if listener is None or (
                len(seq.token_ids) - seq.num_prompt_tokens <= seq.num_delivered
                and seq.finish_reason is None
            ):
                continue
            out = seq.take_output()
            if out.finish_reason is not None:
                seq.listener = None
            try:
                listener(out)
            except Exception:  # one request's consumer must not stop every other request
                log.exception("output listener failed", extra={"request_id": seq.request_id})
                seq.listener = None
                self.scheduler.finish(seq, "abort")

    def _record(self, batch: ScheduledBatch[MockSequence], seconds: float) -> None:
        if batch.prefills:
            self._prefill_avg += (
                _EMA * (seconds - self._prefill_avg) if self._prefill_avg else seconds
            )
        else:
            self._decode_avg += _EMA * (seconds - self._decode_avg) if self._decode_avg else seconds


def create_engine(config: MockerConfig, sink: KvEventSink | None = None) -> MockerEngine:
    return MockerEngine(config, sink)
