"""The `KvTransfer` gRPC service: the receiving side of every transport, on the worker's server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from tandem.runtime.wire import kv_transfer_pb2, kv_transfer_pb2_grpc

from .layout import PairingError, check_pairing
from .peers import KvPeers, PeerUnknownError
from .pool import KvPool
from .receiver import Expectation, KvReceiver, TransferRefused
from .transport import TransferError, layout_from_msg

if TYPE_CHECKING:
    from .nixl_transport import NixlTransport

log = logging.getLogger(__name__)


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
        self,
        request_iterator: AsyncIterator[kv_transfer_pb2.KvBlocksChunk],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[kv_transfer_pb2.KvTransferAck]:
        started = time.perf_counter()
        chunks = aiter(request_iterator)
        first = await anext(chunks, None)
        if first is None or not first.HasField("header"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first chunk has no header")
        assert first is not None
        header = first.header
        dst = list(header.dst_block_ids)
        pool = await self._pool(context)
        entry = await self._begin(header, dst, context)
        ok = False
        received = 0
        try:
            yield kv_transfer_pb2.KvTransferAck(accepted=True)
            async for chunk in chunks:
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
                try:
                    await asyncio.to_thread(pool.write, ids, chunk.data)
                except ValueError as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                received += chunk.num_blocks
            if received != len(dst):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"stream ended after {received} of {len(dst)} blocks",
                )
            ok = True
        finally:
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
