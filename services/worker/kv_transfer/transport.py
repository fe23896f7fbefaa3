"""The transport interface the control plane calls, and what every pooled transport shares.

`send_blocks` is the one call: KV blocks of this worker's pool into a peer's.
It is awaited on the worker's event loop and never runs on (or waits for) the
engine's step thread; bytes move in NIXL READs (progressed by the transport's own
polls) or as gRPC messages.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from tandem.runtime.grpc_util import create_channel
from tandem.runtime.wire import kv_transfer_pb2, kv_transfer_pb2_grpc

from .descriptor import KvDescriptor
from .layout import KvLayout, PairingError, check_pairing
from .peers import KvPeers, PeerUnknownError

if TYPE_CHECKING:  # torch: not imported by the mocker, which uses only the interface
    from .pool import KvPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """The worker that receives the blocks (the decode worker named in the prefill job)."""

    instance_id: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What one transfer moved and how long it took (for the transfer metrics)."""

    num_bytes: int
    seconds: float

    @property
    def gbps(self) -> float:
        return self.num_bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


class TransferError(Exception):
    """The blocks did not land: refused by the peer, peer gone, or timed out."""


class BaseKvTransport(abc.ABC):
    """Moves KV blocks from this worker into a peer's pool; one per worker."""

    name: str

    @abc.abstractmethod
    async def send_blocks(
        self,
        peer: PeerInfo,
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        *,
        transfer_id: str,
    ) -> TransferStats:
        """Copy `src_block_ids` of this pool into `dst_block_ids` of `peer`'s (paired in order).

        Returns once every block is in the peer's pool; raises `TransferError`.
        """

    async def close(self) -> None:
        """Release what the transport holds (channels, registered memory)."""


def layout_msg(layout: KvLayout) -> kv_transfer_pb2.KvBlockLayout:
    return kv_transfer_pb2.KvBlockLayout(
        block_size=layout.block_size,
        num_layers=layout.num_layers,
        num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        dtype=layout.dtype,
        num_blocks=layout.num_blocks,
    )


def layout_from_msg(msg: kv_transfer_pb2.KvBlockLayout) -> KvLayout:
    return KvLayout(
        block_size=msg.block_size,
        num_layers=msg.num_layers,
        num_kv_heads=msg.num_kv_heads,
        head_dim=msg.head_dim,
        dtype=msg.dtype,
        num_blocks=msg.num_blocks,
    )


class StubCache:
    """One `KvTransfer` stub per peer endpoint (channels kept for the next transfer)."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, endpoint: str) -> kv_transfer_pb2_grpc.KvTransferStub:
        return kv_transfer_pb2_grpc.KvTransferStub(self.channel(endpoint))

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            channel = self._channels[endpoint] = create_channel(endpoint)
        return channel

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()


class PooledTransport(BaseKvTransport):
    """A transport that moves real bytes out of a `KvPool`: peer lookup, pairing, deadline, logs."""

    def __init__(
        self, instance_id: str, pool: KvPool, peers: KvPeers, stubs: StubCache, timeout: float
    ) -> None:
        self.instance_id = instance_id
        self.pool = pool
        self.peers = peers
        self.stubs = stubs
        self.timeout = timeout

    def header(
        self, transfer_id: str, dst_block_ids: Sequence[int]
    ) -> kv_transfer_pb2.KvTransferHeader:
        return kv_transfer_pb2.KvTransferHeader(
            transfer_id=transfer_id,
            sender_instance_id=self.instance_id,
            layout=layout_msg(self.pool.layout),
            dst_block_ids=list(dst_block_ids),
        )

    async def send_blocks(
        self,
        peer: PeerInfo,
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        *,
        transfer_id: str,
    ) -> TransferStats:
        src, dst = list(src_block_ids), list(dst_block_ids)
        if len(src) != len(dst):
            raise TransferError(f"{len(src)} source blocks for {len(dst)} destination blocks")
        started = time.perf_counter()
        try:
            descriptor = await self.peers.get(peer.instance_id)
        except PeerUnknownError as exc:
            raise TransferError(str(exc)) from None
        if descriptor.transport != self.name:
            log.warning(
                "kv pairing refused instance_id=%s peer=%s reason='transport %s/%s'",
                self.instance_id,
                peer.instance_id,
                self.name,
                descriptor.transport,
            )
            raise TransferError(
                f"peer {peer.instance_id} uses --kv-transport {descriptor.transport}, "
                f"this worker {self.name}"
            )
        try:
            check_pairing(
                self.pool.layout,
                descriptor.layout,
                local_id=self.instance_id,
                peer_id=peer.instance_id,
                block_ids=src,
            )
        except PairingError as exc:
            raise TransferError(str(exc)) from None
        endpoint = peer.endpoint or descriptor.endpoint
        try:
            ack = await self._transfer(endpoint, src, dst, transfer_id)
        except grpc.aio.AioRpcError as exc:
            self.peers.forget(peer.instance_id)  # a restarted peer republishes its descriptor
            log.warning(
                "kv transfer failed transfer_id=%s peer=%s code=%s detail=%r",
                transfer_id,
                peer.instance_id,
                exc.code().name,
                exc.details(),
            )
            raise TransferError(f"transfer to {peer.instance_id}: {exc.details()}") from None
        stats = TransferStats(ack.bytes, time.perf_counter() - started)
        log.info(
            "kv transfer sent transfer_id=%s peer=%s transport=%s blocks=%d bytes=%d "
            "seconds=%.4f gbps=%.2f",
            transfer_id,
            peer.instance_id,
            self.name,
            len(src),
            stats.num_bytes,
            stats.seconds,
            stats.gbps,
        )
        return stats

    def descriptor(self, endpoint: str) -> KvDescriptor:
        """What this worker publishes at `tandem/{ns}/nixl/{instance_id}`."""
        return descriptor_for(self.instance_id, self.name, endpoint, self.pool)

    @abc.abstractmethod
    async def _transfer(
        self, endpoint: str, src: list[int], dst: list[int], transfer_id: str
    ) -> kv_transfer_pb2.KvTransferAck:
        """Move the blocks (within `self.timeout`); gRPC errors propagate."""

    async def close(self) -> None:
        await self.stubs.close()


def descriptor_for(instance_id: str, transport: str, endpoint: str, pool: KvPool) -> KvDescriptor:
    return KvDescriptor(
        instance_id=instance_id,
        transport=transport,
        endpoint=endpoint,
        layout=pool.layout,
        region_bases=pool.region_bases,
        device_id=pool.device_id,
        mem_type=pool.mem_type,
    )
