"""Disaggregated serving, data plane: moving KV blocks between workers.

The seam with the control plane (`services/worker/disagg/`), as built:

- `KvLayout` (layout.py): block size, layers, KV heads, head dim, dtype and
  pool size; `bytes_per_block`. `check_pairing(local, peer)` refuses two
  workers whose blocks differ (raises `PairingError`, logs one line
  `kv pairing refused ...`), so a mismatched block never reaches attention.
  Both sides check: the sender before it sends, the receiver before it writes.
- `KvPool` (pool.py): the engine's KV memory, one tensor per layer, shaped
  [num_blocks, block_size, 2, kv_heads, head_dim] (the torch engine's
  `kv_pool()`); a block is one contiguous region per layer.
- `KvDescriptor` (descriptor.py): what a worker publishes at
  `tandem/{ns}/nixl/{instance_id}` under its lease: its transport, layout,
  gRPC endpoint and, for NIXL, the agent name and agent metadata.
- `BaseKvTransport` (transport.py): `await send_blocks(peer, src_block_ids,
  dst_block_ids, transfer_id=job_id) -> TransferStats` (bytes, seconds),
  never blocking the engine step. `peer` is a `PeerInfo` (instance id,
  endpoint: the decode worker's, from the job). Implementations:
  - `nixl` (nixl_transport.py): KV memory registered with a NIXL agent (UCX)
    once; `send_blocks` asks the peer's `KvTransfer.PullBlocks`, and the
    receiver does one one-sided NIXL READ from the sender's registered
    blocks straight into its own, then answers (completion = the READ's).
  - `grpc` (grpc_transport.py): streams the blocks' bytes to the peer's
    `KvTransfer.PushBlocks` (proto/kv_transfer.proto); the receiver writes
    each into its destination block as it arrives.
  The mocker moves no bytes: its `SimulatedTransport` (disagg/sim_transport.py)
  implements the same interface with a bandwidth-timed sleep.
  `send_blocks` returns once every block is in the peer's pool (the source
  blocks may then be released); it raises `TransferError` (refused, peer
  gone, timed out) and never hangs past `--kv-transfer-timeout`.
- `KvReceiver` (receiver.py), the decode side's gate: a transfer lands only
  where the decode worker said it waits for one. The decode worker calls
  `receiver.expect(job_id, dst_block_ids)` before it publishes the job,
  `await receiver.withdraw(job_id)` when it stops waiting (timeout, client
  gone) and before it reuses those blocks (it returns once no write into
  them is in flight; every later transfer for that job is refused), and may
  check `receiver.landed(job_id)` on completion.
- `KvTransferPlane` (plane.py): one worker's data plane: transport, receiver,
  the `KvTransfer` gRPC servicer (served on the worker's gRPC server), the
  etcd descriptor and the peer lookup. `WorkerServer` builds it
  (`plane_for_worker`) for workers whose role is `prefill` or `decode` and
  whose engine has KV memory (`kv_pool()`: the torch engine), and hands it to
  the control plane as the transport, its `receiver` as the gate.
  `--kv-transport nixl` where NIXL cannot load fails the worker at start
  (exit 78, one line naming `--kv-transport grpc`): no silent fallback.
"""

from .layout import KvLayout, PairingError, check_pairing
from .transport import BaseKvTransport, PeerInfo, TransferError, TransferStats

__all__ = [
    "BaseKvTransport",
    "KvLayout",
    "PairingError",
    "PeerInfo",
    "TransferError",
    "TransferStats",
    "check_pairing",
]
