"""One worker's KV data plane: transport, receiving gate, `KvTransfer` service, etcd descriptor."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import grpc
from tandem.runtime.keys import kv_descriptor_key

from .config import KvTransferConfig
from .nixl_api import load_nixl
from .peers import KvPeers
from .pool import KvPool
from .receiver import KvReceiver
from .service import KvTransferService, add_to_server
from .transport import BaseKvTransport, PeerInfo, PooledTransport, StubCache, TransferStats

log = logging.getLogger(__name__)


@runtime_checkable
class KvPoolOwner(Protocol):
    """An engine whose KV memory can be registered for transfers (the torch engine)."""

    def kv_pool(self) -> KvPool:
        """Its KV tensors and layout (after `start()`)."""
        ...


class KvTransferPlane(BaseKvTransport):
    """Owns a worker's transport, `KvReceiver` and `KvTransfer` servicer.

    Made with the worker (the control plane takes `receiver` and the plane
    itself as its transport); `start(pool)` once the engine's KV memory exists
    (NIXL registers it then), `add_to_server` before the gRPC server starts,
    `publish` once its endpoint is known.
    """

    def __init__(
        self, instance_id: str, namespace: str, config: KvTransferConfig, etcd: Any
    ) -> None:
        self.instance_id = instance_id
        self.namespace = namespace
        self.config = config
        self.name = config.kv_transport
        self.receiver = KvReceiver(instance_id)
        self.peers = KvPeers(etcd, namespace)
        self.service = KvTransferService(instance_id, self.receiver, None, self.peers)
        self.transport: PooledTransport | None = None
        if config.kv_transport == "nixl":
            load_nixl()  # fails here, before the model loads, where NIXL cannot

    def start(self, pool: KvPool) -> None:
        """Build the transport over `pool` (raises `NixlUnavailable` for nixl where it cannot load)."""
        args = (self.instance_id, pool, self.peers, StubCache(), self.config.kv_transfer_timeout)
        if self.config.kv_transport == "nixl":
            from .nixl_transport import NixlTransport

            nixl = NixlTransport(*args)
            self.transport = self.service.nixl = nixl
        else:
            from .grpc_transport import GrpcTransport

            self.transport = GrpcTransport(*args)
        self.service.pool = pool

    def add_to_server(self, server: grpc.aio.Server) -> None:
        add_to_server(self.service, server)

    async def publish(self, discovery: Any, endpoint: str) -> None:
        """Write the descriptor at `tandem/{ns}/nixl/{instance_id}` under the worker's lease."""
        transport = self._started()
        descriptor = transport.descriptor(endpoint)
        await discovery.put_leased(
            kv_descriptor_key(self.namespace, self.instance_id), descriptor.to_json()
        )
        layout = descriptor.layout
        log.info(
            "kv transfer ready instance_id=%s transport=%s block_size=%d layers=%d kv_heads=%d "
            "head_dim=%d dtype=%s blocks=%d bytes_per_block=%d",
            self.instance_id,
            self.name,
            layout.block_size,
            layout.num_layers,
            layout.num_kv_heads,
            layout.head_dim,
            layout.dtype,
            layout.num_blocks,
            layout.bytes_per_block,
        )

    async def send_blocks(
        self,
        peer: PeerInfo,
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        *,
        transfer_id: str,
    ) -> TransferStats:
        return await self._started().send_blocks(
            peer, src_block_ids, dst_block_ids, transfer_id=transfer_id
        )

    def _started(self) -> PooledTransport:
        if self.transport is None:
            raise RuntimeError("KV transfer plane not started")
        return self.transport

    async def close(self) -> None:
        if self.transport is not None:
            await self.transport.close()


def plane_for_worker(
    role: str,
    config: KvTransferConfig,
    instance_id: str,
    namespace: str,
    etcd: Any,
    engine: object,
) -> KvTransferPlane | None:
    """The plane of a prefill or decode worker whose engine has KV memory; None otherwise
    (aggregated workers move no KV; the mocker simulates its transfers)."""
    if role == "aggregated" or not isinstance(engine, KvPoolOwner):
        return None
    return KvTransferPlane(instance_id, namespace, config, etcd)
