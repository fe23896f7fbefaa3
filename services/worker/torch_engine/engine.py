"""The embedded PyTorch engine: a scheduler thread stepping the model, async streams out.

`generate()` runs on the caller's event loop; loading the model and every
step run in the engine's own thread (all torch work on one thread: see
`start`). Requests and aborts cross into the thread as inbox messages;
outputs come back with one `loop.call_soon_threadsafe` per loop per step,
into one asyncio.Queue per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator

import torch
from tandem.runtime.model_card import ModelCard
from tandem.worker.admission import admit
from tandem.worker.engine import (
    BaseEngine,
    EngineOutput,
    EngineRequest,
    EngineStats,
    EngineStoppedError,
    FinishReason,
    TokenLogprob,
)
from tandem.worker.kv_event_sink import KvEventSink
from tandem.worker.kvbm.manager import KvbmStats

from .config import TorchEngineConfig
from .disagg_hooks import DisaggHooks
from .loader import name_from_path
from .messages import AbortSequence, AddSequence, InboxMessage
from .model import LlamaModel
from .model_config import ModelConfig
from .parts import EngineParts, load_parts
from .runner import TorchSequence
from .sampling import make_generator
from .streams import Outbox, Stream, deliver, make_output

log = logging.getLogger(__name__)


class TorchEngine(DisaggHooks, BaseEngine):
    """Owns the model, the paged KV cache, the BlockManager and the scheduler thread.

    `DisaggHooks` (disagg_hooks.py) adds the prefill and decode roles' calls.
    """

    def __init__(
        self,
        config: TorchEngineConfig,
        sink: KvEventSink | None = None,
        *,
        weights: tuple[ModelConfig, dict[str, torch.Tensor]] | None = None,
    ) -> None:
        """`weights`: already loaded (config, tensors), e.g. shared by several engines in tests."""
        self.config = config
        self._sink = sink
        self._preloaded = weights
        self.block_size = config.scheduler.kv_cache_block_size
        self.total_blocks = 0
        self.model_name = name_from_path(config.resolved_model_path)  # exact after start()
        # Set by the engine thread once loaded; generate() accepts requests from then on.
        self._parts: EngineParts | None = None
        self._cv = threading.Condition()
        # Held by the engine thread while it schedules and post-processes a step (not while
        # the model runs): the disaggregated hooks change the scheduler from the event loop.
        self._sched_lock = threading.Lock()
        self._inbox: list[InboxMessage] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._prefill_time = [0.0, 0]
        self._decode_time = [0.0, 0]
        self._stats = EngineStats(0, 0, 0, 0, 0, 0, 0.0)
        self._kvbm_stats: KvbmStats | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Load the model in the engine thread, then run the step loop there.

        All torch work stays on that one thread: a second thread running
        parallel CPU ops gets its own OpenMP team, and the two teams measured
        1.6x slower decode steps on a 2-core box.
        """
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[None] = loop.create_future()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, args=(loop, loaded), name="torch-engine", daemon=True
        )
        self._thread.start()
        try:
            await loaded
        except BaseException:
            self._thread.join()
            self._thread = None
            raise

    def _run(self, loop: asyncio.AbstractEventLoop, loaded: asyncio.Future[None]) -> None:
        def settle(exc: BaseException | None) -> None:
            if loaded.done():
                return
            if exc is None:
                loaded.set_result(None)
            else:
                loaded.set_exception(exc)

        try:
            parts = load_parts(self.config, self._sink, self._preloaded, self._wake)
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, exc)
            return
        self.model_name = parts.model_config.name
        self.total_blocks = parts.scheduler.block_manager.num_blocks
        self._stats = self._take_stats(parts)
        self._parts = parts  # last: generate() accepts requests from now on
        loop.call_soon_threadsafe(settle, None)
        self._loop(parts)

    async def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with self._cv:
            self._stopping = True
            self._cv.notify()
        await asyncio.to_thread(thread.join)
        self._thread = None

    # -- properties ------------------------------------------------------------

    @property
    def model_config(self) -> ModelConfig | None:
        return self._parts.model_config if self._parts else None

    @property
    def model(self) -> LlamaModel:
        """The loaded model (after `start()`)."""
        if self._parts is None:
            raise RuntimeError("torch engine is not started")
        return self._parts.model

    @property
    def context_length(self) -> int:
        return self._parts.limits.context_length if self._parts else 2**31

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._parts.limits.eos_token_ids if self._parts else ()

    @property
    def model_path(self) -> str:
        return self.config.resolved_model_path

    def model_card(self) -> ModelCard:
        vocab = self._parts.limits.vocab_size if self._parts else 0
        return dataclasses.replace(super().model_card(), vocab_size=vocab)

    def stats(self) -> EngineStats:
        """The snapshot the engine thread took after its last step (never a torn read)."""
        return self._stats

    def kvbm_stats(self) -> KvbmStats | None:
        """The tiered cache's totals as of the last step (taken by the engine thread too)."""
        return self._kvbm_stats

    def _refresh_stats(self, parts: EngineParts) -> None:
        """A new snapshot now (a hook changed the scheduler between steps; caller holds the lock)."""
        self._stats = self._take_stats(parts)

    def _take_stats(self, parts: EngineParts) -> EngineStats:
        if parts.kvbm is not None:
            self._kvbm_stats = parts.kvbm.stats()
        return parts.scheduler.stats(
            self._prefill_time[0] / max(1, self._prefill_time[1]),
            self._decode_time[0] / max(1, self._decode_time[1]),
        )

    # -- requests --------------------------------------------------------------

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        parts = self._parts
        if self._thread is None or parts is None or self._stopping:
            raise EngineStoppedError("engine is not running")
        s = request.sampling
        generator = None
        if not s.is_greedy and s.seed is not None:
            generator = make_generator(self.config.torch_device, s.seed)
        queue: asyncio.Queue[EngineOutput] = asyncio.Queue()
        seq = admit(
            request,
            parts.limits,
            TorchSequence,
            stream=Stream(asyncio.get_running_loop(), queue),
            generator=generator,
        )
        if seq.is_finished:  # a migrated request with nothing left to generate
            yield make_output(seq, None, None, seq.finish_reason)
            return
        self._post(AddSequence(seq))
        finished = False
        try:
            while True:
                out = await queue.get()
                finished = out.finish_reason is not None
                yield out
                if finished:
                    return
        finally:
            if not finished:
                self._post(AbortSequence(seq))

    def _post(self, message: InboxMessage) -> None:
        with self._cv:
            self._inbox.append(message)
            self._cv.notify()

    def _wake(self) -> None:
        """Make the engine thread look at the scheduler again (a parked request resumed)."""
        with self._cv:
            self._cv.notify()

    # -- engine thread ---------------------------------------------------------

    def _loop(self, parts: EngineParts) -> None:
        sched = parts.scheduler
        while True:
            with self._cv:
                while not self._inbox and not self._stopping and not sched.has_work:
                    self._cv.wait()
                inbox, self._inbox = self._inbox, []
                stopping = self._stopping
            outbox: Outbox = []
            with self._sched_lock:
                for message in inbox:
                    seq = message.seq
                    if isinstance(message, AddSequence) and not stopping:
                        sched.add(seq)
                    else:  # an abort, or an add that arrived as the engine stops
                        sched.finish(seq, "abort")
                        sched.release(seq)  # a prefill-only one whose caller is gone
                        if isinstance(message, AddSequence):
                            self._emit(seq, outbox, finish="abort")
                if stopping:
                    for seq in [*sched.running, *sched.waiting, *sched.parked, *sched.onboarding]:
                        sched.finish(seq, "abort")
                        self._emit(seq, outbox, finish="abort")
                    for seq in list(sched.pinned):
                        sched.release(seq)
            if stopping:
                self._stats = self._take_stats(parts)
                deliver(outbox)
                if parts.kvbm is not None:
                    parts.kvbm.close()
                return
            if sched.has_work:
                try:
                    self._step(parts, outbox)
                except Exception as exc:  # the engine must outlive one bad step
                    log.exception("torch engine step failed")
                    with self._sched_lock:
                        for seq in list(sched.running):
                            sched.finish(seq, "error")
                            self._emit(seq, outbox, finish="error", error=str(exc))
            self._stats = self._take_stats(parts)
            deliver(outbox)

    def _step(self, parts: EngineParts, outbox: Outbox) -> None:
        sched = parts.scheduler
        with self._sched_lock:
            batch = sched.schedule()
            if not batch:
                if sched.waiting and not sched.running and not sched.waiting_on_copies:
                    # Cannot happen with validated requests; never spin on it.
                    seq = sched.waiting[0]
                    sched.finish(seq, "error")
                    self._emit(
                        seq, outbox, finish="error", error="request does not fit the KV cache"
                    )
                return
        started = time.perf_counter()
        tokens, logprobs = parts.runner.step(batch)
        elapsed = time.perf_counter() - started
        if parts.kvbm is not None:  # what recomputing a prefix costs, against onboarding it
            parts.kvbm.prefilled(batch.num_prefill_tokens, elapsed)
        timer = self._prefill_time if batch.prefills else self._decode_time
        timer[0] += elapsed
        timer[1] += 1
        with self._sched_lock:
            sched.postprocess(batch, tokens)
            for seq, token, logprob in zip(batch.sampled, tokens, logprobs, strict=True):
                self._emit(seq, outbox, token, logprob, finish=seq.finish_reason)

    def _emit(
        self,
        seq: TorchSequence,
        outbox: Outbox,
        token: int | None = None,
        logprob: TokenLogprob | None = None,
        finish: FinishReason | None = None,
        error: str | None = None,
    ) -> None:
        outbox.append((seq.stream, make_output(seq, token, logprob, finish, error)))


def create_engine(config: TorchEngineConfig, sink: KvEventSink | None) -> BaseEngine:
    """The engine registry's factory for `--engine torch`."""
    return TorchEngine(config, sink)
