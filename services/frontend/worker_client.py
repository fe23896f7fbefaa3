"""Requests to workers: one channel and one Worker.GenerateStream call per worker, shared.

Every request this process sends to a worker rides the same long-lived
GenerateStream call (see services/worker/generate_stream.py): a request is a
`start` message, its outputs come back batched with other requests', and the
reader task hands each to the request's `RequestStream`. When the call breaks
(the worker died, or its channel was dropped), every request on it fails with
the call's status and the next request opens a new call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence

import grpc
from tandem.runtime.grpc_util import TOKEN_COLUMNS_METADATA, create_channel
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class WorkerStreamError(Exception):
    """A request on a worker ended with gRPC status `code` (worker gone, or request refused)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class RequestStream:
    """One request's outputs from a worker, in order; `cancel()` aborts it there.

    Outputs that arrived since the consumer last looked come out merged into
    one response: a consumer that falls behind (a burst of engine steps, a
    slow client) catches up with one SSE write instead of one per step.
    """

    __slots__ = ("_session", "_key", "_items", "_waiter", "_ended")

    def __init__(self, session: WorkerSession, key: int) -> None:
        self._session = session
        self._key = key
        self._items: deque[worker_pb2.GenerateResponse | WorkerStreamError] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> worker_pb2.GenerateResponse:
        if self._ended:
            raise StopAsyncIteration
        items = self._items
        while not items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = items.popleft()
        if isinstance(item, WorkerStreamError):
            self._ended = True
            try:
                raise item
            finally:
                # Else this frame (in the error's traceback) and the error hold each other,
                # and the request's prompt with them, until a full collection.
                del item
        if items and not isinstance(items[0], WorkerStreamError):
            merged = worker_pb2.GenerateResponse()
            merged.MergeFrom(item)  # repeated fields append; finish_reason and usage: the last set
            while items and not isinstance(items[0], WorkerStreamError):
                merged.MergeFrom(items.popleft())  # type: ignore[arg-type]
            item = merged
        if item.finish_reason:
            self._ended = True
        return item

    def deliver(self, item: worker_pb2.GenerateResponse | WorkerStreamError) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancel(self) -> None:
        """Abort the request on the worker (no-op once it has ended)."""
        self._session.cancel(self._key)

    def fail(self, error: WorkerStreamError) -> None:
        """End the request here with `error` (e.g. its worker left etcd) and abort it there."""
        self._session.cancel(self._key)
        self.deliver(error)


class WorkerSession:
    """The GenerateStream call to one worker that all of this process's requests share."""

    def __init__(self, stub: worker_pb2_grpc.WorkerStub) -> None:
        self._outgoing: asyncio.Queue[worker_pb2.StreamRequest | None] = asyncio.Queue()
        self._streams: dict[int, RequestStream] = {}
        self._keys = itertools.count(1)
        self.closed = False
        self._call = stub.GenerateStream(self._requests(), metadata=(TOKEN_COLUMNS_METADATA,))
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def start(
        self, request: worker_pb2.GenerateRequest, trace_metadata: Sequence[tuple[str, str]] = ()
    ) -> RequestStream:
        key = next(self._keys)
        stream = self._streams[key] = RequestStream(self, key)
        msg = worker_pb2.StreamRequest(key=key, start=request)
        if trace_metadata:
            msg.trace_context.update(trace_metadata)
        self._outgoing.put_nowait(msg)
        return stream

    def cancel(self, key: int) -> None:
        if self._streams.pop(key, None) is not None and not self.closed:
            self._outgoing.put_nowait(worker_pb2.StreamRequest(key=key, cancel=True))

    async def close(self) -> None:
        """End the call now; requests still on it fail with CANCELLED."""
        self._call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _requests(self) -> AsyncIterator[worker_pb2.StreamRequest]:
        while (msg := await self._outgoing.get()) is not None:
            yield msg

    async def _read(self) -> None:
        error = WorkerStreamError(grpc.StatusCode.UNAVAILABLE, "worker ended the stream")
        try:
            async for batch in self._call:
                streams = self._streams
                # One-token steps come packed, before every output of the message.
                for key, token in zip(batch.token_keys, batch.token_ids, strict=True):
                    stream = streams.get(key)
                    if stream is not None:
                        stream.deliver(worker_pb2.GenerateResponse(token_ids=(token,)))
                for out in batch.outputs:
                    stream = streams.get(out.key)
                    if stream is None:
                        continue  # cancelled here; outputs already on the wire
                    if out.status_code:
                        del streams[out.key]
                        code = _STATUS_CODES.get(out.status_code, grpc.StatusCode.UNKNOWN)
                        stream.deliver(WorkerStreamError(code, out.status_message))
                    else:
                        if out.response.finish_reason:
                            del streams[out.key]
                        stream.deliver(out.response)
        except grpc.aio.AioRpcError as exc:
            error = WorkerStreamError(exc.code(), exc.details() or "")
        except asyncio.CancelledError:
            error = WorkerStreamError(grpc.StatusCode.CANCELLED, "stream closed")
        finally:
            self.closed = True
            self._outgoing.put_nowait(None)
            for stream in self._streams.values():
                stream.deliver(error)
            self._streams.clear()


class WorkerClientPool:
    """Owns one gRPC channel, stub and GenerateStream session per worker endpoint."""

    def __init__(self) -> None:
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._sessions: dict[str, WorkerSession] = {}

    def stub(self, endpoint: str) -> worker_pb2_grpc.WorkerStub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            channel = create_channel(endpoint)
            self._channels[endpoint] = channel
            stub = self._stubs[endpoint] = worker_pb2_grpc.WorkerStub(channel)
        return stub

    def start(
        self,
        endpoint: str,
        request: worker_pb2.GenerateRequest,
        trace_metadata: Sequence[tuple[str, str]] = (),
    ) -> RequestStream:
        """Send `request` to the worker; a dead endpoint fails the stream at once."""
        session = self._sessions.get(endpoint)
        if session is None or session.closed:
            session = self._sessions[endpoint] = WorkerSession(self.stub(endpoint))
        return session.start(request, trace_metadata)

    async def drop(self, endpoint: str) -> None:
        """Close the channel to a worker that left (requests still on it fail and migrate)."""
        # Forget all three before the first await: a request that starts meanwhile
        # (the worker came back at the same endpoint) opens a fresh channel, which
        # must not be the one closed below.
        self._stubs.pop(endpoint, None)
        session = self._sessions.pop(endpoint, None)
        channel = self._channels.pop(endpoint, None)
        if session is not None:
            await session.close()
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    async def close(self) -> None:
        endpoints = set(self._channels) | set(self._sessions)
        await asyncio.gather(*(self.drop(e) for e in endpoints), return_exceptions=True)
