"""One request's generation: route -> worker stream -> detokenize -> stop strings.

`Generator.stream(job)` yields a `StepOutput` per batch of tokens the worker
sent since the previous one (one text piece per token) and handles, in one place: the router contract
(`prefill_done` at the first token, `free` when an attempt ends), stop
strings, and migration: when the worker's stream breaks (the worker died, or
left etcd), the request moves to another worker with the tokens generated so
far (`num_generated_before`), and the client's stream just continues.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import grpc
from tandem.router.api import NoWorkersError, RouterBusyError
from tandem.runtime.discovery import InstanceInfo
from tandem.runtime.tokenizer import IncrementalDetokenizer
from tandem.runtime.wire import worker_pb2

from .errors import (
    ContextLengthExceededError,
    EngineError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from .metrics import FrontendMetrics
from .models import ServedModel
from .openai_schema import SamplingOptions
from .stop_strings import StopStringMatcher
from .worker_client import RequestStream, WorkerClientPool, WorkerStreamError

log = logging.getLogger(__name__)

_FINISH_REASONS = {
    worker_pb2.FINISH_REASON_STOP: "stop",
    worker_pb2.FINISH_REASON_LENGTH: "length",
    worker_pb2.FINISH_REASON_ABORT: "abort",
}
# Stream errors that mean "this worker is gone or broken", not "this request is bad".
_WORKER_FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# (token_id, logprob, [(alternative_id, logprob), ...])
TokenLogprob = tuple[int, float, list[tuple[int, float]]]


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class StepOutput:
    """What one worker message adds: `texts[i]` is the text released with `token_ids[i]`.

    The final output carries `finish_reason`, and any text held back until the end
    (an incomplete character, a partial stop string) as one extra piece with no token.
    """

    token_ids: list[int]
    texts: list[str]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class GenerationJob:
    """A validated, tokenized request and what happened to it so far."""

    request_id: str
    model: ServedModel
    prompt_ids: list[int]
    sampling: SamplingOptions
    max_tokens: int
    arrived: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    usage: Usage | None = None
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    num_migrations: int = 0
    # W3C trace context from the client (traceparent/tracestate), passed on as gRPC metadata.
    trace_metadata: tuple[tuple[str, str], ...] = ()


def make_job(
    request_id: str, model: ServedModel, prompt_ids: list[int], sampling: SamplingOptions
) -> GenerationJob:
    """Check the prompt against the model (vocabulary, context length); resolve max_tokens."""
    tokenizer = model.tokenizer
    if not prompt_ids:
        raise InvalidRequestError(
            "The prompt is empty after tokenization.", param="prompt", code="empty_prompt"
        )
    vocab_size = tokenizer.vocab_size
    if max(prompt_ids) >= vocab_size:
        bad = next(t for t in prompt_ids if t >= vocab_size)
        raise InvalidRequestError(
            f"Token id {bad} is out of vocabulary (size {vocab_size}).",
            param="prompt",
            code="invalid_value",
        )
    context = model.context_length
    num_prompt = len(prompt_ids)
    max_tokens = sampling.max_tokens
    if context:
        if max_tokens is None:
            max_tokens = context - num_prompt
        if num_prompt + max_tokens > context or max_tokens <= 0:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{num_prompt + max(max_tokens, 0)} tokens ({num_prompt} in the messages, "
                f"{max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.",
                param="max_tokens" if sampling.max_tokens is not None else "messages",
            )
    elif max_tokens is None:
        max_tokens = 4096
    return GenerationJob(request_id, model, prompt_ids, sampling, max_tokens)


class Generator:
    """Runs generations against workers; owns the map of in-flight streams per worker."""

    def __init__(
        self, pool: WorkerClientPool, metrics: FrontendMetrics, max_migrations: int = 3
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._max_migrations = max_migrations
        self._inflight: dict[str, set[RequestStream]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def on_worker_removed(self, info: InstanceInfo) -> None:
        """A worker left etcd (lease expired or it deregistered): move its streams elsewhere."""
        streams = self._inflight.get(info.instance_id)
        if streams:
            log.warning(
                "worker %s left with %d streams in flight; migrating them",
                info.instance_id,
                len(streams),
                extra={"instance_id": info.instance_id},
            )
            left = WorkerStreamError(grpc.StatusCode.UNAVAILABLE, "worker left the cluster")
            for stream in streams:
                stream.fail(left)
        task = asyncio.get_running_loop().create_task(self._pool.drop(info.endpoint))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _request(self, job: GenerationJob) -> worker_pb2.GenerateRequest:
        s = job.sampling
        generated = job.generated
        sampling = worker_pb2.SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seed=s.seed,
            max_tokens=job.max_tokens,
            stop_token_ids=() if s.ignore_eos else job.model.stop_token_ids,
            ignore_eos=s.ignore_eos,
            logprobs=s.logprobs,
            top_logprobs=s.top_logprobs,
        )
        return worker_pb2.GenerateRequest(
            request_id=job.request_id,
            model=job.model.name,
            token_ids=job.prompt_ids + generated if generated else job.prompt_ids,
            sampling=sampling,
            num_generated_before=len(generated),
        )

    async def stream(self, job: GenerationJob) -> AsyncGenerator[StepOutput, None]:
        """Yield outputs until the request finishes; raises FrontendError subclasses on failure."""
        model = job.model
        router = model.router
        request_id = job.request_id
        detok = model.tokenizer.detokenizer()
        matcher = StopStringMatcher(job.sampling.stop) if job.sampling.stop else None
        want_logprobs = job.sampling.logprobs
        generated = job.generated
        itl = self._metrics.model(model.name).itl
        excluded: list[str] = []
        while True:
            try:
                route = await router.route(
                    request_id,
                    job.prompt_ids + generated,
                    exclude=excluded,
                    max_tokens=job.max_tokens - len(generated),
                )
            except (NoWorkersError, RouterBusyError) as exc:
                raise ServiceUnavailableError(
                    f"No worker available for model {model.name!r}: {exc}"
                ) from None
            stream = self._pool.start(route.endpoint, self._request(job), job.trace_metadata)
            self._inflight.setdefault(route.instance_id, set()).add(stream)
            waiting_first = True
            try:
                async for msg in stream:
                    ids = msg.token_ids
                    if ids:
                        now = time.monotonic()
                        if job.last_token_at:
                            # Each delivery's gap, per token it carries; a migration's
                            # stall shows too, as the client saw it.
                            itl.observe((now - job.last_token_at) / len(ids))
                        if waiting_first:
                            waiting_first = False
                            router.prefill_done(request_id)
                            if not job.first_token_at:
                                job.first_token_at = now
                        job.last_token_at = now
                        out = self._step(job, ids, msg, detok, matcher, want_logprobs)
                        if out.finish_reason is None and msg.finish_reason:
                            out = self._finish(job, msg, detok, matcher, out)
                        yield out
                        if out.finish_reason is not None:
                            return  # done (or a stop string: the finally cancels the worker)
                    elif msg.finish_reason:
                        yield self._finish(job, msg, detok, matcher)
                        return
                failure = "stream ended without a finish reason"
            except WorkerStreamError as exc:
                if exc.code not in _WORKER_FAILURES:
                    raise EngineError(f"worker rejected the request: {exc.details}") from None
                failure = str(exc)
            finally:
                inflight = self._inflight.get(route.instance_id)
                if inflight is not None:
                    inflight.discard(stream)
                    if not inflight:
                        del self._inflight[route.instance_id]
                stream.cancel()
                router.free(request_id)
            # The worker failed mid-request: continue elsewhere with what it produced.
            if job.num_migrations >= self._max_migrations:
                raise ServiceUnavailableError(
                    f"Request failed on {job.num_migrations + 1} workers; last error: {failure}"
                )
            job.num_migrations += 1
            excluded.append(route.instance_id)
            self._metrics.model(model.name).migrations.inc()
            log.warning(
                "worker %s failed mid-stream (%s) after %d tokens; migrating",
                route.instance_id,
                failure,
                len(generated),
                extra={"request_id": request_id, "instance_id": route.instance_id},
            )

    def _step(
        self,
        job: GenerationJob,
        ids: Sequence[int],
        msg: worker_pb2.GenerateResponse,
        detok: IncrementalDetokenizer,
        matcher: StopStringMatcher | None,
        want_logprobs: bool,
    ) -> StepOutput:
        generated = job.generated
        room = job.max_tokens - len(generated)
        new = list(ids) if len(ids) <= room else list(ids)[:room]
        try:
            if matcher is None:
                texts = [detok.add_one(t) for t in new]
            else:
                texts = []
                for i, t in enumerate(new):
                    text, stopped = matcher.feed(detok.add_one(t))
                    texts.append(text)
                    if stopped:
                        del new[i + 1 :]
                        generated.extend(new)
                        logprobs = self._logprobs(msg, len(new)) if want_logprobs else None
                        return StepOutput(new, texts, logprobs, "stop")
        except IndexError:
            raise EngineError(
                f"worker returned a token id outside the vocabulary: {list(msg.token_ids)}"
            ) from None
        generated.extend(new)
        logprobs = self._logprobs(msg, len(new)) if want_logprobs else None
        if len(generated) >= job.max_tokens and not msg.finish_reason:
            # The worker should have stopped here itself; do not relay more than asked.
            return self._finish(
                job, msg, detok, matcher, StepOutput(new, texts, logprobs), "length"
            )
        return StepOutput(new, texts, logprobs)

    def _finish(
        self,
        job: GenerationJob,
        msg: worker_pb2.GenerateResponse,
        detok: IncrementalDetokenizer,
        matcher: StopStringMatcher | None,
        out: StepOutput | None = None,
        reason: str | None = None,
    ) -> StepOutput:
        if msg.finish_reason == worker_pb2.FINISH_REASON_ERROR:
            raise EngineError(f"engine error: {msg.error or 'unknown'}")
        reason = reason or _FINISH_REASONS.get(msg.finish_reason, "stop")
        tail = detok.flush()
        if matcher is not None:
            text, stopped = matcher.feed(tail)
            tail = text if stopped else text + matcher.flush()
            if stopped:
                reason = "stop"
        if out is None:
            out = StepOutput([], [], None)
        if tail:
            out.texts.append(tail)
        out.finish_reason = reason
        num_prompt = len(job.prompt_ids)
        cached = min(msg.usage.cached_tokens, num_prompt) if msg.HasField("usage") else 0
        job.usage = Usage(num_prompt, len(job.generated), cached)
        return out

    @staticmethod
    def _logprobs(msg: worker_pb2.GenerateResponse, count: int) -> list[TokenLogprob]:
        return [
            (lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
            for lp in msg.logprobs[:count]
        ]

    def usage_of(self, job: GenerationJob) -> Usage:
        """Usage for a request, also when it ended early (stop string, error)."""
        return job.usage or Usage(len(job.prompt_ids), len(job.generated), 0)

    def record(self, job: GenerationJob) -> None:
        """Per-request metrics, once, when the request ends."""
        m = self._metrics.model(job.model.name)
        now = time.monotonic()
        num_out = len(job.generated)
        m.request_duration.observe(now - job.arrived)
        m.input_tokens.observe(len(job.prompt_ids))
        m.output_tokens.observe(num_out)
        if job.first_token_at:
            m.ttft.observe(job.first_token_at - job.arrived)
        if job.usage is not None and job.usage.cached_tokens:
            m.cached_tokens.inc(job.usage.cached_tokens)
