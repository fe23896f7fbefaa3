"""`--kv-transport grpc`: the blocks' bytes streamed to the peer's `KvTransfer.PushBlocks`.

Works wherever gRPC does (no NIXL, any machine). Blocks go in chunks of about
`CHUNK_BYTES`, read from the pool off the event loop while the previous chunk
is on the wire.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from tandem.runtime.wire import kv_transfer_pb2

from .transport import PooledTransport

CHUNK_BYTES = 4 * 1024 * 1024
"""Per message: large enough that per-message costs vanish, far below the 64 MiB gRPC limit."""


class GrpcTransport(PooledTransport):
    """Streams block bytes over the peer's gRPC server."""

    name = "grpc"

    async def _transfer(
        self, endpoint: str, src: list[int], dst: list[int], transfer_id: str
    ) -> kv_transfer_pb2.KvTransferAck:
        per_chunk = max(1, CHUNK_BYTES // self.pool.layout.bytes_per_block)
        header = self.header(transfer_id, dst)

        call = self.stubs.stub(endpoint).PushBlocks(timeout=self.timeout)
        try:
            await call.write(kv_transfer_pb2.KvBlocksChunk(header=header))
            await accepted(call)  # refused: the peer's status, before any data is sent
            pending: tuple[asyncio.Future[bytes], int] | None = None
            for start in range(0, len(src), per_chunk):
                ids = src[start : start + per_chunk]
                nxt = asyncio.ensure_future(asyncio.to_thread(self.pool.read, ids))
                if pending is not None:
                    await call.write(_chunk(pending[1], await pending[0]))
                pending = (nxt, len(ids))
            if pending is not None:
                await call.write(_chunk(pending[1], await pending[0]))
            await call.done_writing()
        except asyncio.InvalidStateError:  # the peer ended the call while we wrote
            raise await _status_error(call) from None
        return await accepted(call)


def _chunk(num_blocks: int, data: bytes) -> kv_transfer_pb2.KvBlocksChunk:
    return kv_transfer_pb2.KvBlocksChunk(num_blocks=num_blocks, data=data)


async def accepted(call: Any) -> kv_transfer_pb2.KvTransferAck:
    """The next ack of a `PushBlocks` call; the call's error status if it ended instead."""
    ack = await call.read()
    if ack is grpc.aio.EOF:
        raise await _status_error(call)
    return ack


async def _status_error(call: Any) -> grpc.aio.AioRpcError:
    """The call's final status as the error the rest of the transfer code handles."""
    code = await call.code()
    if code == grpc.StatusCode.OK:  # ended without its answer: a broken peer
        code = grpc.StatusCode.INTERNAL
    return grpc.aio.AioRpcError(
        code,
        await call.initial_metadata(),
        await call.trailing_metadata(),
        await call.details() or "the peer ended the transfer without an answer",
    )
