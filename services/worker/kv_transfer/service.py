"""The `KvTransfer` gRPC service: the receiving side of every transport, on the worker's server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from tandem.runtime.wire import kv_transfer_pb2, kv_transfer_pb2_grpc

from .chunk_codec import ParsedChunk, parse_chunk
from .layout import PairingError, check_pairing
from .peers import KvPeers, PeerUnknownError
from .pool import KvPool
from .receiver import Expectation, KvReceiver, TransferRefused
from .transport import TransferError, layout_from_msg

if TYPE_CHECKING:
    from .nixl_transport import NixlTransport

log = logging.getLogger(__name__)

SERVICE_NAME = "tandem.v1.KvTransfer"


class KvTransferService(kv_transfer_pb2_grpc.KvTransferServicer):
    """Writes arriving blocks into the pool, only for transfers the `KvReceiver` expects.

    `pool` and `nixl` are set when the plane starts (the engine's KV memory
    exists then); `nixl` only when this worker's transport is NIXL.
    """

    def __init__(
        self,
        instance_id: str,
        receiver: KvReceiver,
        pool: KvPool | None,
        peers: KvPeers | None = None,
        nixl: NixlTransport | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.receiver = receiver
        self.pool = pool
        self.peers = peers
        self.nixl = nixl

    async def PushBlocks(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kv_transfer_pb2.KvTransferAck]:
        """Served with raw bytes in (`add_to_server`): chunks are parsed by chunk_codec."""
        started = time.perf_counter()
        chunks = aiter(request_iterator)
        first = await anext(chunks, None)
        header = None if first is None else (await _parsed(first, context)).header
        if header is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first chunk has no header")
        assert header is not None
        dst = list(header.dst_block_ids)
        pool = await self._pool(context)
        entry = await self._begin(header, dst, context)
        ok = False
        received = 0
        # One chunk is written into the pool while the next arrives.
        writing: asyncio.Future[None] | None = None
        try:
            yield kv_transfer_pb2.KvTransferAck(accepted=True)
            async for raw in chunks:
                chunk = await _parsed(raw, context)
                if not self.receiver.still_wanted(entry):
                    await context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"transfer {header.transfer_id} withdrawn by the receiver",
                    )
                ids = dst[received : received + chunk.num_blocks]
                if len(ids) != chunk.num_blocks:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, "more blocks than announced"
                    )
                if writing is not None:
                    await _written(writing, context)
                writing = asyncio.ensure_future(_write(pool, ids, chunk.data))
                received += chunk.num_blocks
            if writing is not None:
                await _written(writing, context)
            if received != len(dst):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"stream ended after {received} of {len(dst)} blocks",
                )
            ok = True
        finally:
            if writing is not None:
                # The gate opens (`end`) only once no write into the blocks is in flight.
                await asyncio.wait([writing])
            self.receiver.end(entry, ok)
        yield self._received(header, len(dst) * pool.layout.bytes_per_block, started)

    async def PullBlocks(
        self, request: kv_transfer_pb2.KvPullRequest, context: grpc.aio.ServicerContext
    ) -> kv_transfer_pb2.KvTransferAck:
        started = time.perf_counter()
        header = request.header
        dst, src = list(header.dst_block_ids), list(request.src_block_ids)
        pool = await self._pool(context)
        if self.nixl is None or self.peers is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"worker {self.instance_id} does not use --kv-transport nixl",
            )
        assert self.nixl is not None and self.peers is not None
        if len(src) != len(dst):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "source and destination differ in length"
            )
        try:
            sender = await self.peers.get(
                header.sender_instance_id, agent_name=request.sender_agent_name
            )
        except PeerUnknownError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        entry = await self._begin(header, dst, context)
        ok = False
        try:
            await self.nixl.read_into(sender, src, dst)
            ok = True
        except TransferError as exc:
            self.peers.forget(header.sender_instance_id)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            self.receiver.end(entry, ok)
        return self._received(header, len(dst) * pool.layout.bytes_per_block, started)

    async def _pool(self, context: grpc.aio.ServicerContext) -> KvPool:
        if self.pool is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"worker {self.instance_id} has no KV memory registered for transfers",
            )
        assert self.pool is not None
        return self.pool

    async def _begin(
        self,
        header: kv_transfer_pb2.KvTransferHeader,
        dst: list[int],
        context: grpc.aio.ServicerContext,
    ) -> Expectation:
        assert self.pool is not None
        try:
            check_pairing(
                self.pool.layout,
                layout_from_msg(header.layout),
                local_id=self.instance_id,
                peer_id=header.sender_instance_id,
                block_ids=dst,
            )
            return self.receiver.begin(header.transfer_id, dst, header.sender_instance_id)
        except (PairingError, TransferRefused, ValueError) as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise  # unreachable: abort raises

    def _received(
        self, header: kv_transfer_pb2.KvTransferHeader, num_bytes: int, started: float
    ) -> kv_transfer_pb2.KvTransferAck:
        seconds = time.perf_counter() - started
        log.info(
            "kv transfer received transfer_id=%s instance_id=%s sender=%s blocks=%d bytes=%d "
            "seconds=%.4f",
            header.transfer_id,
            self.instance_id,
            header.sender_instance_id,
            len(header.dst_block_ids),
            num_bytes,
            seconds,
        )
        return kv_transfer_pb2.KvTransferAck(bytes=num_bytes, seconds=seconds)


def add_to_server(service: KvTransferService, server: grpc.aio.Server) -> None:
    """Serve `service` as `tandem.v1.KvTransfer`, PushBlocks taking its chunks as raw bytes.

    The generated registration would parse every chunk with protobuf (two
    copies of the payload); `chunk_codec.parse_chunk` takes a view instead.
    """
    handlers = {
        "PushBlocks": grpc.stream_stream_rpc_method_handler(
            service.PushBlocks,
            request_deserializer=None,
            response_serializer=kv_transfer_pb2.KvTransferAck.SerializeToString,
        ),
        "PullBlocks": grpc.unary_unary_rpc_method_handler(
            service.PullBlocks,
            request_deserializer=kv_transfer_pb2.KvPullRequest.FromString,
            response_serializer=kv_transfer_pb2.KvTransferAck.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


async def _parsed(raw: bytes, context: grpc.aio.ServicerContext) -> ParsedChunk:
    try:
        return parse_chunk(raw)
    except ValueError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise  # unreachable: abort raises


async def _write(pool: KvPool, ids: list[int], data: memoryview) -> None:
    if pool.is_cuda:  # a host-to-device copy: off the event loop
        await asyncio.to_thread(pool.write, ids, data)
    else:
        # As long as gRPC's own copy of the message on this loop; a thread hop per
        # chunk cost more than it saved (0.5 vs 0.8 GB/s in bench/kv_transfer.py).
        pool.write(ids, data)


async def _written(writing: asyncio.Future[None], context: grpc.aio.ServicerContext) -> None:
    try:
        await writing
    except ValueError as exc:  # the chunk's bytes do not fill its blocks
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
