"""RequestStream: outputs that queued up come out merged; errors end the stream in order.
WorkerClientPool: one channel and session per worker endpoint, dropped and reopened safely."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import grpc
import pytest
from tandem.frontend.worker_client import RequestStream, WorkerClientPool, WorkerStreamError
from tandem.runtime.wire import worker_pb2

from tests.support.frontend_fakes import FakeWorker


class RecordingSession:
    def __init__(self) -> None:
        self.cancelled: list[int] = []

    def cancel(self, key: int) -> None:
        self.cancelled.append(key)


def response(token: int, finish: int = 0) -> worker_pb2.GenerateResponse:
    msg = worker_pb2.GenerateResponse(
        token_ids=[token],
        logprobs=[worker_pb2.TokenLogprob(token_id=token, logprob=-1.0)],
        finish_reason=finish,
    )
    if finish:
        msg.usage.completion_tokens = 3
    return msg


async def test_queued_outputs_come_out_as_one_response() -> None:
    stream = RequestStream(RecordingSession(), 7)  # type: ignore[arg-type]
    stream.deliver(response(10))
    first = await anext(stream)
    assert list(first.token_ids) == [10]
    for token in (11, 12):
        stream.deliver(response(token))
    stream.deliver(response(13, worker_pb2.FINISH_REASON_LENGTH))
    merged = await anext(stream)
    assert list(merged.token_ids) == [11, 12, 13]
    assert [lp.token_id for lp in merged.logprobs] == [11, 12, 13]
    assert merged.finish_reason == worker_pb2.FINISH_REASON_LENGTH
    assert merged.usage.completion_tokens == 3
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_an_error_is_not_merged_and_ends_the_stream() -> None:
    session = RecordingSession()
    stream = RequestStream(session, 3)  # type: ignore[arg-type]
    stream.deliver(response(10))
    stream.deliver(response(11))
    stream.fail(WorkerStreamError(grpc.StatusCode.UNAVAILABLE, "worker left"))
    assert session.cancelled == [3]  # the worker is told to stop too
    assert list((await anext(stream)).token_ids) == [10, 11]
    with pytest.raises(WorkerStreamError) as err:
        await anext(stream)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_an_error_leaves_no_reference_cycle_behind() -> None:
    # A cycle (error -> traceback -> frame -> error) would hold the request, prompt and all,
    # until a full collection, which a serving process runs rarely (tune_gc).
    stream = RequestStream(RecordingSession(), 3)  # type: ignore[arg-type]
    stream.deliver(WorkerStreamError(grpc.StatusCode.OUT_OF_RANGE, "prompt too long"))
    gc.disable()
    try:
        with pytest.raises(WorkerStreamError) as err:
            await anext(stream)
        error = weakref.ref(err.value)
        del err
        assert error() is None
    finally:
        gc.enable()


async def _tokens(pool: WorkerClientPool, endpoint: str, request_id: str) -> list[int]:
    stream = pool.start(endpoint, worker_pb2.GenerateRequest(request_id=request_id, token_ids=[5]))
    tokens: list[int] = []
    async for response in stream:
        tokens.extend(response.token_ids)
    return tokens


async def test_a_request_started_while_its_worker_is_dropped_gets_a_fresh_channel(
    servers: Any,
) -> None:
    # A worker that leaves and comes back at the same endpoint (lease expiry under
    # load): the frontend drops it while new requests already pick it again.
    tokens = [100, 101, 102]
    endpoint = await servers(FakeWorker(tokens))
    pool = WorkerClientPool()
    try:
        assert await _tokens(pool, endpoint, "before") == tokens
        dropping = asyncio.create_task(pool.drop(endpoint))
        await asyncio.sleep(0)  # the drop runs up to its first await
        during = asyncio.create_task(_tokens(pool, endpoint, "during"))
        await dropping
        assert await during == tokens
        assert await _tokens(pool, endpoint, "after") == tokens
    finally:
        await pool.close()
