"""The torch engine's side of disaggregated serving (`disagg.engine_hooks.DisaggEngine`).

Called on the worker's event loop while the engine thread steps: each hook
touches the scheduler only under the engine's scheduler lock, which the engine
thread holds while it schedules and post-processes a step but not while the
model runs, so a hook waits at most for one step's bookkeeping, never for a
forward pass. Outputs reach the caller's listener on its loop, as every
output of this engine does (`streams.deliver`).

- decode: `submit_parked` allocates all of a request's blocks (cached prefix
  matched) and parks it; `resume_parked` marks the received blocks computed and
  emits the first token sampled remotely, or lets this engine prefill it.
- prefill: `prefill_only` runs the prompt with `max_tokens` 1 and the blocks
  pinned when it finishes, until the caller releases them after the transfer.
- `kv_pool`: the KV tensors, for the worker's KV transfer plane to register.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from tandem.worker.admission import admit
from tandem.worker.disagg.engine_hooks import ParkedRequest, PrefillResult
from tandem.worker.engine import (
    EngineError,
    EngineOutput,
    EngineRequest,
    EngineStoppedError,
    OutputListener,
    TokenLogprob,
)
from tandem.worker.kv_transfer.pool import KvPool
from tandem.worker.kv_transfer.transport import BaseKvTransport

from .messages import AbortSequence, AddSequence, InboxMessage
from .runner import TorchSequence
from .sampling import make_generator
from .streams import Stream, make_output

if TYPE_CHECKING:
    from .parts import EngineParts


class ListenerQueue:
    """Stands in for a stream's asyncio.Queue: each output goes to a listener (on its loop)."""

    __slots__ = ("listener",)

    def __init__(self, listener: OutputListener) -> None:
        self.listener = listener

    def put_nowait(self, out: EngineOutput) -> None:
        self.listener(out)


class DisaggHooks:
    """Mixed into `TorchEngine`: what the control plane calls (see the module docstring)."""

    _parts: EngineParts | None
    _sched_lock: threading.Lock
    block_size: int

    def _post(self, message: InboxMessage) -> None: ...  # TorchEngine's

    def _wake(self) -> None: ...  # TorchEngine's

    def _refresh_stats(self, parts: EngineParts) -> None: ...  # TorchEngine's

    def kv_pool(self) -> KvPool:
        parts = self._running_parts()
        return KvPool.of(parts.runner.kv_cache, self.block_size)

    def kv_transport(self) -> BaseKvTransport:
        # The worker's KV transfer plane owns the transport; the engine only has the memory.
        raise NotImplementedError("the torch engine's KV transport is the worker's KvTransferPlane")

    def submit_parked(
        self, request: EngineRequest, listener: OutputListener
    ) -> tuple[Callable[[], None], ParkedRequest | None]:
        parts = self._running_parts()
        seq = self._sequence(request, listener)
        loop = asyncio.get_running_loop()
        if seq.is_finished:  # a migrated request with nothing left to generate
            loop.call_soon(listener, make_output(seq, None, None, seq.finish_reason))
            return lambda: None, None
        with self._sched_lock:
            parked_ok = parts.scheduler.park(seq)
            if parked_ok:
                self._refresh_stats(parts)  # its blocks count as used from now on
        parked = None
        if parked_ok:
            assert seq.table is not None
            num_held = seq.table.num_cached_tokens // self.block_size
            parked = ParkedRequest(
                seq.request_id, seq.table.num_cached_tokens, seq.table.block_ids[num_held:], seq
            )
        else:
            self._post(AddSequence(seq))
        return lambda: self._post(AbortSequence(seq)), parked

    def resume_parked(
        self, parked: ParkedRequest, first_token: int | None, logprob: TokenLogprob | None
    ) -> bool:
        sched = self._running_parts().scheduler
        seq: TorchSequence = parked.handle
        with self._sched_lock:
            if first_token is None:
                resumed = sched.resume_local(seq)
            else:
                if seq.generator is not None:  # the prefill worker drew the first token
                    seq.draws_to_skip = 1
                resumed = sched.resume_remote(seq, first_token)
                if resumed:
                    out = make_output(
                        seq,
                        first_token,
                        logprob if seq.params.logprobs else None,
                        seq.finish_reason,
                    )
        if resumed:
            if first_token is not None:
                seq.stream.queue.put_nowait(out)
            self._wake()
        return resumed

    async def prefill_only(self, request: EngineRequest) -> PrefillResult:
        done: asyncio.Future[EngineOutput] = asyncio.get_running_loop().create_future()

        def on_output(out: EngineOutput) -> None:
            if out.finish_reason is not None and not done.done():
                done.set_result(out)

        parts = self._running_parts()
        seq = self._sequence(request, on_output)
        if seq.is_finished:
            raise EngineError("nothing to prefill: the request has no tokens left to generate")
        seq.max_new_tokens = 1
        seq.pin_blocks = True
        self._post(AddSequence(seq))
        try:
            out = await done
        except BaseException:
            self._post(AbortSequence(seq))
            raise
        if out.finish_reason not in ("stop", "length") or not out.token_ids or seq.table is None:
            self._release(parts, seq)
            raise EngineError(f"prefill ended with {out.finish_reason}: {out.error or ''}")
        return PrefillResult(
            first_token=out.token_ids[0],
            logprob=out.logprobs[0] if out.logprobs else None,
            block_ids=list(seq.table.block_ids),
            release=lambda: self._release(parts, seq),
        )

    def _release(self, parts: EngineParts, seq: TorchSequence) -> None:
        with self._sched_lock:
            parts.scheduler.release(seq)
            self._refresh_stats(parts)

    def _sequence(self, request: EngineRequest, listener: OutputListener) -> TorchSequence:
        parts = self._running_parts()
        s = request.sampling
        generator = None
        if not s.is_greedy and s.seed is not None:
            generator = make_generator(parts.model.device, s.seed)
        stream = Stream(asyncio.get_running_loop(), ListenerQueue(listener))  # type: ignore[arg-type]
        return admit(request, parts.limits, TorchSequence, stream=stream, generator=generator)

    def _running_parts(self) -> EngineParts:
        if self._parts is None:
            raise EngineStoppedError("engine is not running")
        return self._parts
