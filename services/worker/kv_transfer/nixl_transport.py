"""`--kv-transport nixl`: one-sided NIXL READs (UCX) from the sender's registered KV memory.

Each worker registers its whole KV pool with its NIXL agent once, at start,
and publishes the agent's metadata in its descriptor. To send, the prefill
worker asks the decode worker's `KvTransfer.PullBlocks`; the decode worker
checks the layout and that it expects the transfer, loads the sender's agent
metadata (once per agent), and READs the source blocks straight into its
destination blocks. The READ's completion is the transfer's: the answer
means every block is in place, so the sender may release its source blocks.

NIXL calls stay on the event loop thread (the agent is created thread-safe
all the same), and neither the loop nor the engine step waits on them. The
agent runs without NIXL's progress thread, which polls a core even while no
transfer runs: UCX makes progress only in our calls, with short sleeps
between them, on both sides of a transfer and only while it is in flight.
The reader's completion polls (`check_xfer_state`) drive its READ; the
sender, whose memory is read, drives its side (the reader's connection)
with `get_new_notifs` until the `PullBlocks` answer comes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any

from tandem.runtime.wire import kv_transfer_pb2

from .descriptor import KvDescriptor
from .nixl_api import NixlUnavailable, load_nixl
from .peers import KvPeers
from .pool import KvPool, block_regions
from .transport import PooledTransport, StubCache, TransferError

log = logging.getLogger(__name__)

_POLL_FIRST_SECONDS = 50e-6
_POLL_MAX_SECONDS = 2e-3


class NixlTransport(PooledTransport):
    """Owns this worker's NIXL agent, its registration of the KV pool and the peers it loaded."""

    name = "nixl"

    def __init__(
        self, instance_id: str, pool: KvPool, peers: KvPeers, stubs: StubCache, timeout: float
    ) -> None:
        super().__init__(instance_id, pool, peers, stubs, timeout)
        nixl = load_nixl()
        # A fresh name per start: a restarted worker is a new agent to its peers.
        self.agent_name = f"{instance_id}-{uuid.uuid4().hex[:8]}"
        config = nixl.nixl_agent_config(
            enable_prog_thread=False,
            backends=["UCX"],
            sync_mode=nixl.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT,
        )
        try:
            self.agent: Any = nixl.nixl_agent(self.agent_name, config)
        except Exception as exc:
            raise NixlUnavailable(f"--kv-transport nixl: NIXL agent did not start: {exc}") from None
        if "UCX" not in self.agent.backends:
            raise NixlUnavailable(
                "--kv-transport nixl: NIXL's UCX backend did not load; start with --kv-transport grpc"
            )
        self._registered = self.agent.register_memory(pool.tensors)
        self._remotes: dict[str, str] = {}  # agent name -> name NIXL knows it by
        log.info(
            "nixl agent ready instance_id=%s agent=%s mem=%s bytes=%d",
            instance_id,
            self.agent_name,
            pool.mem_type,
            pool.layout.num_blocks * pool.layout.bytes_per_block,
        )

    def descriptor(self, endpoint: str) -> KvDescriptor:
        return dataclasses.replace(
            super().descriptor(endpoint),
            agent_name=self.agent_name,
            agent_metadata=self.agent.get_agent_metadata(),
        )

    async def _transfer(
        self, endpoint: str, src: list[int], dst: list[int], transfer_id: str
    ) -> kv_transfer_pb2.KvTransferAck:
        request = kv_transfer_pb2.KvPullRequest(
            header=self.header(transfer_id, dst),
            src_block_ids=src,
            sender_agent_name=self.agent_name,
        )
        call = self.stubs.stub(endpoint).PullBlocks(request, timeout=self.timeout)
        pull = asyncio.ensure_future(call)
        delay = _POLL_FIRST_SECONDS
        while not pull.done():
            self.agent.get_new_notifs()  # UCX progress: answers the reader's connection
            await asyncio.wait({pull}, timeout=delay)
            delay = min(delay * 2, _POLL_MAX_SECONDS)
        return await pull

    async def read_into(self, sender: KvDescriptor, src: list[int], dst: list[int]) -> None:
        """READ `src` blocks of `sender`'s pool into `dst` of ours; raises `TransferError`."""
        remote = self._remote(sender)
        local_descs = self.agent.get_xfer_descs(self.pool.regions(dst), self.pool.mem_type)
        remote_rows = block_regions(sender.region_bases, sender.layout, sender.device_id, src)
        remote_descs = self.agent.get_xfer_descs(remote_rows, sender.mem_type)
        try:
            handle = self.agent.initialize_xfer("READ", local_descs, remote_descs, remote)
        except Exception as exc:
            self._drop(sender.agent_name)
            raise TransferError(
                f"NIXL READ from {sender.instance_id} not prepared: {exc}"
            ) from None
        try:
            await self._complete(handle, sender)
        finally:
            try:
                handle.release()
            except Exception as exc:  # an aborted transfer NIXL could not cancel yet
                log.warning("nixl transfer handle not released: %s", exc)

    async def _complete(self, handle: Any, sender: KvDescriptor) -> None:
        deadline = time.monotonic() + self.timeout
        state = self.agent.transfer(handle)
        delay = _POLL_FIRST_SECONDS
        while state == "PROC":
            if time.monotonic() > deadline:
                self._drop(sender.agent_name)
                raise TransferError(
                    f"NIXL READ from {sender.instance_id} not done after {self.timeout:.0f}s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_SECONDS)
            state = self.agent.check_xfer_state(handle)
        if state != "DONE":
            self._drop(sender.agent_name)
            raise TransferError(f"NIXL READ from {sender.instance_id} failed ({state})")

    def _remote(self, sender: KvDescriptor) -> str:
        name = self._remotes.get(sender.agent_name)
        if name is None:
            try:
                name = self.agent.add_remote_agent(sender.agent_metadata)
            except Exception as exc:
                raise TransferError(
                    f"NIXL metadata of {sender.instance_id} not loaded: {exc}"
                ) from None
            if isinstance(name, bytes):
                name = name.decode()
            self._remotes[sender.agent_name] = name
        return name

    def _drop(self, agent_name: str) -> None:
        """Forget a peer agent after a failure (it is loaded again from etcd next time)."""
        name = self._remotes.pop(agent_name, None)
        if name is not None:
            try:
                self.agent.remove_remote_agent(name)
            except Exception as exc:
                log.debug("nixl remote agent %s not removed: %s", name, exc)

    async def close(self) -> None:
        await super().close()
        try:
            self.agent.deregister_memory(self._registered)
        except Exception as exc:
            log.debug("nixl memory not deregistered: %s", exc)
