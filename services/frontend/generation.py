"""One request's generation: route -> worker stream -> migrate.

`Generator.stream(job)` yields a `StepOutput` per batch of tokens the worker
sent since the previous one (the `OutputProcessor` makes it) and handles, in
one place: the router contract (`prefill_done` at the first token, `free`
when an attempt ends), the worker's verdict on the request (a bad request is
a 400, not something to retry elsewhere), and migration: when the worker's
stream breaks (the worker died, or left etcd), the request moves to another
worker with the tokens generated so far (`num_generated_before`), and the
client's stream just continues. A request routed to a decode worker may have
its prompt prefilled on a prefill worker (`disagg.py` decides, per attempt).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator

import grpc
from tandem.router.api import NoWorkersError, RouterBusyError
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.wire import worker_pb2

from .disagg import Disaggregation
from .errors import (
    ContextLengthExceededError,
    EngineError,
    FrontendError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from .job import GenerationJob, StepOutput
from .metrics import FrontendMetrics
from .output_processor import OutputProcessor
from .worker_client import RequestStream, WorkerClientPool, WorkerStreamError

log = logging.getLogger(__name__)

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


def generate_request(job: GenerationJob) -> worker_pb2.GenerateRequest:
    """The worker's request for the job's next attempt (the prompt plus what was relayed)."""
    s = job.sampling
    generated = job.generated
    sampling = worker_pb2.SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed,
        # 0: up to the context length, which the worker knows and enforces.
        max_tokens=s.max_tokens or 0,
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


def rejection(job: GenerationJob, exc: WorkerStreamError) -> FrontendError:
    """The client's error for a request the worker refused (`exc.code` not a worker failure).

    The worker's messages are written for the client. The frontend checked every
    sampling field itself, so what the worker refuses is the prompt (empty, or a
    token id outside the vocabulary), named as this API names it.
    """
    if exc.code == grpc.StatusCode.OUT_OF_RANGE:
        return ContextLengthExceededError(exc.details, param=job.length_param)
    if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidRequestError(exc.details, param=job.prompt_param, code="invalid_value")
    return EngineError(f"worker rejected the request: {exc.details}")


class Generator:
    """Runs generations against workers; owns the map of in-flight streams per worker."""

    def __init__(
        self,
        pool: WorkerClientPool,
        metrics: FrontendMetrics,
        max_migrations: int = 3,
        disagg: Disaggregation | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._max_migrations = max_migrations
        self._disagg = disagg
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

    async def stream(self, job: GenerationJob) -> AsyncGenerator[StepOutput, None]:
        """Yield outputs until the request finishes; raises FrontendError subclasses on failure."""
        model = job.model
        router = model.router
        request_id = job.request_id
        processor = OutputProcessor(job)
        step, finish = processor.step, processor.finish
        generated = job.generated
        itl = self._metrics.model(model.name).itl
        excluded: list[str] = []
        while True:
            try:
                route = await router.route(
                    request_id,
                    job.prompt_ids + generated,
                    exclude=excluded,
                    max_tokens=job.output_estimate(),
                )
            except (NoWorkersError, RouterBusyError) as exc:
                raise ServiceUnavailableError(
                    f"No worker available for model {model.name!r}: {exc}"
                ) from None
            request = generate_request(job)
            remote = None
            if self._disagg is not None:
                tokens = job.prompt_ids + generated if generated else job.prompt_ids
                remote = await self._disagg.decide(request_id, model, route, tokens)
                if remote is not None:
                    request.remote_prefill.prefill_instance_id = remote.instance_id
            stream = self._pool.start(route.endpoint, request, job.trace_metadata)
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
                            if remote is not None:  # its prefill worker is done with it
                                remote.router.free(request_id)
                            if not job.first_token_at:
                                job.first_token_at = now
                        job.last_token_at = now
                        out = step(ids, msg)
                        if out.finish_reason is None and msg.finish_reason:
                            out = finish(msg, out)
                        yield out
                        if out.finish_reason is not None:
                            return  # done (or a stop string: the finally cancels the worker)
                    elif msg.finish_reason:
                        yield finish(msg)
                        return
                failure = "stream ended without a finish reason"
            except WorkerStreamError as exc:
                if exc.code not in _WORKER_FAILURES:
                    raise rejection(job, exc) from None
                failure = str(exc)
            finally:
                inflight = self._inflight.get(route.instance_id)
                if inflight is not None:
                    inflight.discard(stream)
                    if not inflight:
                        del self._inflight[route.instance_id]
                stream.cancel()
                router.free(request_id)
                if remote is not None:
                    remote.router.free(request_id)
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
