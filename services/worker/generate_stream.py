"""Worker.GenerateStream: many requests over one gRPC stream, their outputs batched per write.

A unary-stream Generate call costs both ends a call set-up per request and a
message per token. Here a client process keeps one stream per worker: each
request is a `start` message, and every write carries what all its requests
produced since the previous write, so at steady state one message per engine
step replaces one message per token per request.

The per-request work is the caller's `RequestHandler`, the same one that
serves `Worker.Generate`; it ends a request early by raising `RequestFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping

import grpc
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


async def serve_generate_stream(
    requests: AsyncIterator[worker_pb2.StreamRequest],
    context: grpc.aio.ServicerContext,
    handler: RequestHandler,
) -> None:
    """Serve one GenerateStream call until the client half-closes and every request has ended.

    If the call itself ends (client gone, channel closed), every request on it
    is cancelled, which aborts it in the engine and frees its blocks.
    """
    await _StreamSession(context, handler).run(requests)


class _StreamSession:
    def __init__(self, context: grpc.aio.ServicerContext, handler: RequestHandler) -> None:
        self._context = context
        self._handler = handler
        self._pending = worker_pb2.StreamResponse()
        self._wakeup = asyncio.Event()  # an output is pending, a request ended, or reading ended
        self._running: dict[int, asyncio.Task[None]] = {}

    async def run(self, requests: AsyncIterator[worker_pb2.StreamRequest]) -> None:
        pacer = WritePacer(MIN_WRITE_INTERVAL_S)
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self._pending.outputs:
                    await pacer.wait()
                    # Whatever accumulates while this write is in flight goes in the next one.
                    batch, self._pending = self._pending, worker_pb2.StreamResponse()
                    await self._write(batch)
                    pacer.flushed()
                    self._wakeup.set()  # look again: more may have come, or all may have ended
                elif reader.done() and not self._running:
                    return
        finally:
            reader.cancel()
            tasks = list(self._running.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def _write(self, batch: worker_pb2.StreamResponse) -> None:
        outputs = batch.outputs
        if len(outputs) <= MAX_OUTPUTS_PER_WRITE:
            await self._context.write(batch)
            return
        for i in range(0, len(outputs), MAX_OUTPUTS_PER_WRITE):
            chunk = outputs[i : i + MAX_OUTPUTS_PER_WRITE]
            await self._context.write(worker_pb2.StreamResponse(outputs=chunk))

    async def _read(self, requests: AsyncIterator[worker_pb2.StreamRequest]) -> None:
        try:
            async for msg in requests:
                action = msg.WhichOneof("action")
                if action == "start":
                    self._start(msg)
                elif action == "cancel":
                    task = self._running.pop(msg.key, None)
                    if task is not None:
                        task.cancel()
        finally:
            self._wakeup.set()

    def _start(self, msg: worker_pb2.StreamRequest) -> None:
        key = msg.key
        if key in self._running:
            self._end(key, grpc.StatusCode.INVALID_ARGUMENT, f"stream key {key} is already in use")
            return
        self._running[key] = asyncio.create_task(
            self._pump(key, msg.start, msg.trace_context), name=f"request-{msg.start.request_id}"
        )

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
            if self._running.get(key) is asyncio.current_task():
                del self._running[key]
            self._wakeup.set()

    def _end(self, key: int, code: grpc.StatusCode, message: str) -> None:
        self._pending.outputs.add(key=key, status_code=code.value[0], status_message=message)
        self._wakeup.set()
