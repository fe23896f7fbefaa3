"""GenerateStream's server side with a recording context: batching, splitting, per-request ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import grpc
from tandem.runtime.wire import worker_pb2
from tandem.worker import generate_stream
from tandem.worker.generate_stream import RequestFailed, serve_generate_stream


class RecordingContext:
    def __init__(self) -> None:
        self.writes: list[worker_pb2.StreamResponse] = []

    async def write(self, message: worker_pb2.StreamResponse) -> None:
        self.writes.append(message)


async def requests(*msgs: worker_pb2.StreamRequest) -> AsyncIterator[worker_pb2.StreamRequest]:
    for msg in msgs:
        yield msg


def start(key: int, max_tokens: int) -> worker_pb2.StreamRequest:
    request = worker_pb2.GenerateRequest(
        request_id=f"r{key}", sampling=worker_pb2.SamplingParams(max_tokens=max_tokens)
    )
    return worker_pb2.StreamRequest(key=key, start=request)


async def count_up(
    request: worker_pb2.GenerateRequest, trace_context: Mapping[str, str]
) -> AsyncIterator[worker_pb2.GenerateResponse]:
    """One token per output, no awaits in between: every output is pending before a write."""
    n = request.sampling.max_tokens
    if n == 0:
        raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, "nothing to do")
    for i in range(n):
        yield worker_pb2.GenerateResponse(
            token_ids=[i], finish_reason=worker_pb2.FINISH_REASON_LENGTH if i == n - 1 else 0
        )


async def test_a_backlog_is_split_into_bounded_writes_in_order() -> None:
    context = RecordingContext()
    total = generate_stream.MAX_OUTPUTS_PER_WRITE + 10
    await asyncio.wait_for(
        serve_generate_stream(requests(start(1, total)), context, count_up),  # type: ignore[arg-type]
        10,
    )
    assert [len(w.outputs) for w in context.writes] == [generate_stream.MAX_OUTPUTS_PER_WRITE, 10]
    tokens = [t for w in context.writes for o in w.outputs for t in o.response.token_ids]
    assert tokens == list(range(total))


async def test_requests_share_writes_and_fail_alone() -> None:
    context = RecordingContext()
    await asyncio.wait_for(
        serve_generate_stream(
            requests(start(1, 3), start(2, 0), start(3, 3)),
            context,  # type: ignore[arg-type]
            count_up,
        ),
        10,
    )
    outputs = [o for w in context.writes for o in w.outputs]
    assert any(len({o.key for o in w.outputs}) > 1 for w in context.writes)
    assert [list(o.response.token_ids) for o in outputs if o.key == 1] == [[0], [1], [2]]
    assert [list(o.response.token_ids) for o in outputs if o.key == 3] == [[0], [1], [2]]
    [failed] = [o for o in outputs if o.key == 2]
    assert failed.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert failed.status_message == "nothing to do"
