"""`--kv-transport grpc`: the blocks' bytes streamed to the peer's `KvTransfer.PushBlocks`.

Works wherever gRPC does (no NIXL, any machine). Blocks go in chunks of
about `CHUNK_BYTES`, each a `KvBlocksChunk` encoded by hand (chunk_codec.py)
around one copy of the blocks out of the pool, and sent as raw bytes (the
call's request serializer is the identity): protobuf never touches the
payload. The next chunk is read from the pool while the previous one is on
the wire.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from tandem.runtime.wire import kv_transfer_pb2

from .chunk_codec import data_prefix, encode_header
from .transport import PooledTransport

PUSH_BLOCKS = "/tandem.v1.KvTransfer/PushBlocks"

CHUNK_BYTES = 1024 * 1024
"""Per message, at least one block. Python gRPC streamed 1 MiB messages at least as
fast as 4 or 16 MiB ones (bench/kv_transfer.py); far below the 64 MiB limit."""


class GrpcTransport(PooledTransport):
    """Streams block bytes over the peer's gRPC server."""

    name = "grpc"

    async def _transfer(
        self, endpoint: str, src: list[int], dst: list[int], transfer_id: str
    ) -> kv_transfer_pb2.KvTransferAck:
        per_block = self.pool.layout.bytes_per_block
        per_chunk = max(1, CHUNK_BYTES // per_block)
        push = self.stubs.channel(endpoint).stream_stream(
            PUSH_BLOCKS,
            request_serializer=None,  # messages are already bytes
            response_deserializer=kv_transfer_pb2.KvTransferAck.FromString,
        )
        call = push(timeout=self.timeout)
        try:
            await call.write(encode_header(self.header(transfer_id, dst)))
            await accepted(call)  # refused: the peer's status, before any data is sent
            pending: asyncio.Future[bytes] | None = None
            for start in range(0, len(src), per_chunk):
                ids = src[start : start + per_chunk]
                prefix = data_prefix(len(ids), len(ids) * per_block)
                nxt = asyncio.ensure_future(self._read(ids, prefix))
                if pending is not None:
                    await call.write(await pending)
                pending = nxt
            if pending is not None:
                await call.write(await pending)
            await call.done_writing()
        except asyncio.InvalidStateError:  # the peer ended the call while we wrote
            raise await _status_error(call) from None
        return await accepted(call)

    async def _read(self, ids: list[int], prefix: bytes) -> bytes:
        if self.pool.is_cuda:  # a device-to-host copy: off the event loop
            return await asyncio.to_thread(self.pool.read, ids, prefix)
        # A host chunk's copy takes as long as gRPC's own copy of the message on
        # this loop; a thread hop per chunk cost more than it saved (0.5 vs 0.8 GB/s).
        return self.pool.read(ids, prefix)


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
