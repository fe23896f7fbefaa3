"""The embedded PyTorch engine: a scheduler thread stepping the model, async streams out.

`generate()` runs on the caller's event loop; loading the model and every
step run in the engine's own thread (all torch work on one thread: see
`start`). Requests and aborts cross into the thread through an inbox; outputs
come back with one `loop.call_soon_threadsafe` per loop per step, into one
asyncio.Queue per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator

import torch
from tandem.runtime.host import usable_cpus
from tandem.runtime.model_card import ModelCard
from tandem.worker.block_manager import BlockManager
from tandem.worker.engine import (
    BaseEngine,
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    TokenLogprob,
    Usage,
)
from tandem.worker.kv_event_sink import KvEventSink
from tandem.worker.scheduler import Scheduler

from .config import TorchEngineConfig
from .loader import load_weights, name_from_path, num_kv_blocks
from .model import LlamaModel
from .model_config import ModelConfig
from .runner import ModelRunner, TorchSequence
from .sampling import make_generator
from .streams import Outbox, Stream, deliver, make_output

log = logging.getLogger(__name__)


class TorchEngine(BaseEngine):
    """Owns the model, the paged KV cache, the BlockManager and the scheduler thread."""

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
        self.block_size = config.kv_cache_block_size
        self.total_blocks = 0
        self.model_name = name_from_path(config.resolved_model_path)  # exact after start()
        self.model_config: ModelConfig | None = None
        self._context_length = 0
        self._cv = threading.Condition()
        self._inbox: list[tuple[str, TorchSequence]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._prefill_time = [0.0, 0]
        self._decode_time = [0.0, 0]
        self._stats = EngineStats(0, 0, 0, 0, 0, 0, 0.0)

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
            self._load()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, exc)
            return
        loop.call_soon_threadsafe(settle, None)
        self._loop()

    def _load(self) -> None:
        cfg = self.config
        device = cfg.torch_device
        if device.type == "cpu":
            torch.set_num_threads(cfg.num_threads or usable_cpus())
        started = time.perf_counter()
        if self._preloaded is not None:
            model_config, weights = self._preloaded[0], dict(self._preloaded[1])
        else:
            model_config, weights = load_weights(cfg.resolved_model_path)
        self.model = LlamaModel(model_config, weights, cfg.torch_dtype, device)
        self.model_name = model_config.name
        per_block = self.model.kv_bytes_per_block(self.block_size)
        num_blocks = num_kv_blocks(cfg, model_config, per_block)
        self.total_blocks = num_blocks
        self.block_manager = BlockManager(
            num_blocks, self.block_size, self._sink,
            enable_prefix_caching=cfg.enable_prefix_caching,
        )  # fmt: skip
        self.scheduler: Scheduler[TorchSequence] = Scheduler(
            self.block_manager, cfg.max_num_seqs, cfg.max_num_batched_tokens
        )
        self.runner = ModelRunner(self.model, num_blocks, self.block_size, cfg.seed)
        limit = model_config.context_length
        if cfg.max_model_len > 0:
            limit = min(limit, cfg.max_model_len)
        self._context_length = min(limit, num_blocks * self.block_size)
        self._stats = self._take_stats()
        self.model_config = model_config  # last: generate() accepts requests from now on
        log.info(
            "torch engine loaded model=%s dtype=%s device=%s kv_blocks=%d block_size=%d "
            "kv_gib=%.2f seconds=%.1f",
            self.model_name, cfg.torch_dtype, device, num_blocks, self.block_size,
            num_blocks * per_block / 2**30, time.perf_counter() - started,
        )  # fmt: skip

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
    def context_length(self) -> int:
        return self._context_length or 2**31

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.model_config.eos_token_ids if self.model_config else ()

    @property
    def model_path(self) -> str:
        return self.config.resolved_model_path

    def model_card(self) -> ModelCard:
        vocab = self.model_config.vocab_size if self.model_config else 0
        return dataclasses.replace(super().model_card(), vocab_size=vocab)

    def stats(self) -> EngineStats:
        """The snapshot the engine thread took after its last step (never a torn read)."""
        return self._stats

    def _take_stats(self) -> EngineStats:
        bm, sched = self.block_manager, self.scheduler
        return EngineStats(
            total_blocks=bm.num_blocks,
            active_blocks=bm.num_active_blocks,
            cached_blocks=bm.num_cached_blocks,
            num_running=len(sched.running),
            num_waiting=len(sched.waiting),
            pending_prefill_tokens=sched.num_pending_prefill_tokens,
            prefix_cache_hit_rate=bm.prefix_cache_hit_rate,
            num_preemptions=sched.num_preemptions,
            prefill_step_seconds_avg=self._prefill_time[0] / max(1, self._prefill_time[1]),
            decode_step_seconds_avg=self._decode_time[0] / max(1, self._decode_time[1]),
        )

    # -- requests --------------------------------------------------------------

    def _validate(self, request: EngineRequest) -> int:
        """Reject what this engine can never serve; returns the number of tokens to generate."""
        if self._thread is None or self.model_config is None or self._stopping:
            raise EngineError("engine is not running")
        prompt = request.token_ids
        if not prompt:
            raise EngineError("empty prompt")
        vocab = self.model_config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise EngineError(f"token id out of range [0, {vocab})")
        s = request.sampling
        if s.temperature < 0 or not 0.0 < s.top_p <= 1.0 or s.top_k < 0 or s.top_logprobs < 0:
            raise EngineError("invalid sampling parameters")
        if not 0 <= request.num_generated_before <= len(prompt):
            raise EngineError("num_generated_before must be within the prompt")
        limit = self.context_length
        # max_tokens bounds the whole completion, including tokens migrated in;
        # 0 means up to the context length.
        if s.max_tokens > 0:
            max_new = s.max_tokens - request.num_generated_before
        else:
            max_new = limit - len(prompt)
        if len(prompt) >= limit:
            raise EngineError(
                f"prompt has {len(prompt)} tokens; this model's context length is {limit}"
            )
        if len(prompt) + max(max_new, 0) > limit:
            raise EngineError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({max_new}) exceeds "
                f"the context length {limit}"
            )
        return max_new

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        max_new = self._validate(request)
        prompt_tokens = len(request.token_ids) - request.num_generated_before
        if max_new <= 0:
            yield EngineOutput(
                [], finish_reason="length",
                usage=Usage(prompt_tokens, request.num_generated_before, 0),
            )  # fmt: skip
            return
        s = request.sampling
        generator = None
        if not s.is_greedy and s.seed is not None:
            generator = make_generator(self.config.torch_device, s.seed)
        queue: asyncio.Queue[EngineOutput] = asyncio.Queue()
        seq = TorchSequence(
            request_id=request.request_id,
            token_ids=list(request.token_ids),
            params=s,
            max_new_tokens=max_new,
            max_len=self._context_length,
            eos_token_ids=self.eos_token_ids,
            num_generated_before=request.num_generated_before,
            stream=Stream(asyncio.get_running_loop(), queue),
            generator=generator,
        )
        self._post("add", seq)
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
                self._post("abort", seq)

    def _post(self, kind: str, seq: TorchSequence) -> None:
        with self._cv:
            self._inbox.append((kind, seq))
            self._cv.notify()

    # -- engine thread ---------------------------------------------------------

    def _loop(self) -> None:
        sched = self.scheduler
        while True:
            with self._cv:
                while not self._inbox and not self._stopping and not sched.has_work:
                    self._cv.wait()
                inbox, self._inbox = self._inbox, []
                stopping = self._stopping
            outbox: Outbox = []
            for kind, seq in inbox:
                if kind == "add" and not stopping:
                    sched.add(seq)
                else:  # an abort, or an add that arrived as the engine stops
                    sched.finish(seq, "abort")
                    if kind == "add":
                        self._emit(seq, outbox, finish="abort")
            if stopping:
                for seq in [*sched.running, *sched.waiting]:
                    sched.finish(seq, "abort")
                    self._emit(seq, outbox, finish="abort")
                self._stats = self._take_stats()
                deliver(outbox)
                return
            if sched.has_work:
                try:
                    self._step(outbox)
                except Exception as exc:  # the engine must outlive one bad step
                    log.exception("torch engine step failed")
                    for seq in list(sched.running):
                        sched.finish(seq, "error")
                        self._emit(seq, outbox, finish="error", error=str(exc))
            self._stats = self._take_stats()
            deliver(outbox)

    def _step(self, outbox: Outbox) -> None:
        sched = self.scheduler
        batch = sched.schedule()
        if not batch:
            if sched.waiting and not sched.running:
                # Cannot happen with validated requests; never spin on it.
                seq = sched.waiting[0]
                sched.finish(seq, "error")
                self._emit(seq, outbox, finish="error", error="request does not fit the KV cache")
            return
        started = time.perf_counter()
        tokens, logprobs = self.runner.step(batch)
        elapsed = time.perf_counter() - started
        timer = self._prefill_time if batch.prefills else self._decode_time
        timer[0] += elapsed
        timer[1] += 1
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
