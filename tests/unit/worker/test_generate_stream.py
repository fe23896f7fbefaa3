"""GenerateStream's server side with a recording context: batching, splitting, per-request ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import grpc
from tandem.runtime.grpc_util import TOKEN_COLUMNS_METADATA
from tandem.runtime.wire import worker_pb2
from tandem.worker import generate_stream
from tandem.worker.generate_stream import Emit, RequestFailed, serve_generate_stream

LENGTH = worker_pb2.FINISH_REASON_LENGTH


class RecordingContext:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.writes: list[worker_pb2.StreamResponse] = []
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

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


def count_up_pushed(
    request: worker_pb2.GenerateRequest, trace_context: Mapping[str, str], emit: Emit
) -> Callable[[], None]:
    """A push engine's starter: plain steps as fields, the last as a message, emitted soon."""
    n = request.sampling.max_tokens
    if n == 0:
        raise RequestFailed(grpc.StatusCode.INVALID_ARGUMENT, "nothing to do")
    aborted = False

    def run() -> None:
        for i in range(n - 1):
            emit({"token_ids": [i]}, False)
        last = worker_pb2.GenerateResponse(token_ids=[n - 1], finish_reason=LENGTH)
        if not aborted:
            emit(last, True)

    asyncio.get_running_loop().call_soon(run)

    def abort() -> None:
        nonlocal aborted
        aborted = True

    return abort


def tokens_by_key(writes: list[worker_pb2.StreamResponse]) -> dict[int, list[int]]:
    """Each request's tokens as a reader applies a write: its columns, then its outputs."""
    tokens: dict[int, list[int]] = {}
    for w in writes:
        for key, token in zip(w.token_keys, w.token_ids, strict=True):
            tokens.setdefault(key, []).append(token)
        for o in w.outputs:
            tokens.setdefault(o.key, []).extend(o.response.token_ids)
    return tokens


async def test_pushed_steps_go_in_token_columns_only_for_a_client_that_reads_them() -> None:
    msgs = (start(1, 3), start(2, 0), start(3, 4))
    plain, packed = RecordingContext(), RecordingContext((TOKEN_COLUMNS_METADATA,))
    for context in (plain, packed):
        await asyncio.wait_for(
            serve_generate_stream(requests(*msgs), context, count_up, count_up_pushed),  # type: ignore[arg-type]
            10,
        )
        assert tokens_by_key(context.writes) == {1: [0, 1, 2], 2: [], 3: [0, 1, 2, 3]}
        [failed] = [o for w in context.writes for o in w.outputs if o.key == 2]
        assert failed.status_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        finals = [o for w in context.writes for o in w.outputs if o.response.finish_reason]
        assert sorted(o.key for o in finals) == [1, 3]  # a request's last is always an output
    assert not any(w.token_keys for w in plain.writes)  # an older client: outputs only
    assert sum(len(w.token_keys) for w in packed.writes) == 2 + 3
    assert sum(len(w.outputs) for w in packed.writes) == 3
