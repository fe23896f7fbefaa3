"""Worker.GenerateStream: many requests over one gRPC stream, their outputs batched per write.

A unary-stream Generate call costs both ends a call set-up per request and a
message per token. Here a client process keeps one stream per worker: each
request is a `start` message, and every write carries what all its requests
produced since the previous write, so at steady state one message per engine
step replaces one message per token per request.

The per-request work is the caller's `RequestHandler`, the same one that
serves `Worker.Generate`; it ends a request early by raising `RequestFailed`.
An engine that pushes its outputs (`PushEngine`) is served through a
`RequestStarter` instead: no task per request, each output goes straight
into the next write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from tandem.runtime.grpc_util import TOKEN_COLUMNS_METADATA
from tandem.runtime.pacing import WritePacer
from tandem.runtime.wire import worker_pb2

log = logging.getLogger(__name__)

# Writes on one stream are at least this far apart (see WritePacer): at real
# step times (milliseconds) every step is written at once.
MIN_WRITE_INTERVAL_S = 0.0005
# A write carries at most this many outputs (each one step of one request,
# well under a kilobyte with top logprobs): a backlog that built up while the
# client stalled goes out in messages far below the gRPC message size limit.
MAX_OUTPUTS_PER_WRITE = 4096


class RequestFailed(Exception):
    """A request ends with gRPC status `code` (Generate: the call's; GenerateStream: its output's)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# (request, trace context of the request) -> its responses; raises RequestFailed.
RequestHandler = Callable[
    [worker_pb2.GenerateRequest, Mapping[str, str]], AsyncIterator[worker_pb2.GenerateResponse]
]
# (response or the fields to build it from, is it the request's last) -> None.
Emit = Callable[[worker_pb2.GenerateResponse | dict[str, Any], bool], None]
# (request, trace context, emit) -> a function that aborts it; raises RequestFailed. It never
# emits before it returned, and emits nothing after the last response or the abort.
RequestStarter = Callable[[worker_pb2.GenerateRequest, Mapping[str, str], Emit], Callable[[], None]]


async def serve_generate_stream(
    requests: AsyncIterator[worker_pb2.StreamRequest],
    context: grpc.aio.ServicerContext,
    handler: RequestHandler,
    starter: RequestStarter | None = None,
) -> None:
    """Serve one GenerateStream call until the client half-closes and every request has ended.

    Requests run through `starter` when given, else each in a task over `handler`.
    If the call itself ends (client gone, channel closed), every request on it
    is cancelled, which aborts it in the engine and frees its blocks.
    """
    await _StreamSession(context, handler, starter).run(requests)


class _StreamSession:
    def __init__(
        self,
        context: grpc.aio.ServicerContext,
        handler: RequestHandler,
        starter: RequestStarter | None,
    ) -> None:
        self._context = context
        self._handler = handler
        self._starter = starter
        self._pending = worker_pb2.StreamResponse()
        # Token columns of the next write (a client that reads them asked in its metadata).
        self._columns = TOKEN_COLUMNS_METADATA in (context.invocation_metadata() or ())
        self._token_keys: list[int] = []
        self._token_ids: list[int] = []
        self._wakeup = asyncio.Event()  # an output is pending, a request ended, or reading ended
        # Each running request's cancel: its task's, or the abort its starter returned.
        self._running: dict[int, Callable[[], object]] = {}
        self._pumps: set[asyncio.Task[None]] = set()

    async def run(self, requests: AsyncIterator[worker_pb2.StreamRequest]) -> None:
        pacer = WritePacer(MIN_WRITE_INTERVAL_S)
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self._pending.outputs or self._token_keys:
                    await pacer.wait()
                    # Whatever accumulates while this write is in flight goes in the next one.
                    batch, self._pending = self._pending, worker_pb2.StreamResponse()
                    if self._token_keys:
                        batch.token_keys.extend(self._token_keys)
                        batch.token_ids.extend(self._token_ids)
                        self._token_keys, self._token_ids = [], []
                    await self._write(batch)
                    pacer.flushed()
                    self._wakeup.set()  # look again: more may have come, or all may have ended
                elif reader.done() and not self._running:
                    return
        finally:
            reader.cancel()
            cancels, self._running = list(self._running.values()), {}
            for cancel in cancels:
                cancel()
            await asyncio.gather(reader, *self._pumps, return_exceptions=True)

    async def _write(self, batch: worker_pb2.StreamResponse) -> None:
        outputs = batch.outputs
        if len(outputs) <= MAX_OUTPUTS_PER_WRITE:
            await self._context.write(batch)
            return
        for i in range(0, len(outputs), MAX_OUTPUTS_PER_WRITE):
            chunk = worker_pb2.StreamResponse(outputs=outputs[i : i + MAX_OUTPUTS_PER_WRITE])
            if i == 0:  # the columns come before every output
                chunk.token_keys.extend(batch.token_keys)
                chunk.token_ids.extend(batch.token_ids)
            await self._context.write(chunk)

    async def _read(self, requests: AsyncIterator[worker_pb2.StreamRequest]) -> None:
        try:
            async for msg in requests:
                action = msg.WhichOneof("action")
                if action == "start":
                    self._start(msg)
                elif action == "cancel":
                    cancel = self._running.pop(msg.key, None)
                    if cancel is not None:
                        cancel()
        finally:
            self._wakeup.set()

    def _start(self, msg: worker_pb2.StreamRequest) -> None:
        key = msg.key
        if key in self._running:
            self._end(key, grpc.StatusCode.INVALID_ARGUMENT, f"stream key {key} is already in use")
            return
        if self._starter is not None:
            self._push(key, msg.start, msg.trace_context, self._starter)
            return
        task = asyncio.create_task(
            self._pump(key, msg.start, msg.trace_context), name=f"request-{msg.start.request_id}"
        )
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        self._running[key] = task.cancel

    def _push(
        self,
        key: int,
        request: worker_pb2.GenerateRequest,
        trace_context: Mapping[str, str],
        starter: RequestStarter,
    ) -> None:
        columns = self._columns

        def emit(response: worker_pb2.GenerateResponse | dict[str, Any], last: bool) -> None:
            if columns and not last and type(response) is dict:  # only token ids
                tokens = response["token_ids"]
                self._token_keys.extend([key] * len(tokens))
                self._token_ids.extend(tokens)
            else:
                self._pending.outputs.add(key=key, response=response)
            if last:
                self._running.pop(key, None)
            self._wakeup.set()

        try:
            self._running[key] = starter(request, trace_context, emit)
        except RequestFailed as exc:
            self._end(key, exc.code, exc.message)
        except Exception as exc:  # one request's bug must not end the others
            log.exception("request failed", extra={"request_id": request.request_id})
            self._end(key, grpc.StatusCode.INTERNAL, f"worker error: {exc}")

    async def _pump(
        self, key: int, request: worker_pb2.GenerateRequest, trace_context: Mapping[str, str]
    ) -> None:
        responses = self._handler(request, trace_context)
        try:
            async with contextlib.aclosing(responses):  # type: ignore[type-var]
                async for response in responses:
                    self._pending.outputs.add(key=key, response=response)
                    self._wakeup.set()
        except RequestFailed as exc:
            self._end(key, exc.code, exc.message)
        except asyncio.CancelledError:
            raise  # the client cancelled it, or the whole call ended: nothing to send
        except Exception as exc:  # one request's bug must not end the others
            log.exception("request failed", extra={"request_id": request.request_id})
            self._end(key, grpc.StatusCode.INTERNAL, f"worker error: {exc}")
        finally:
            task = asyncio.current_task()
            # A bound method compares equal to another of the same task (`is` would not).
            if task is not None and self._running.get(key) == task.cancel:
                del self._running[key]
            self._wakeup.set()

    def _end(self, key: int, code: grpc.StatusCode, message: str) -> None:
        self._pending.outputs.add(key=key, status_code=code.value[0], status_message=message)
        self._wakeup.set()
