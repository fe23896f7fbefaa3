"""The mocker's KV transport: no bytes move, the transfer takes the time the bytes would.

Behind the data plane's interface (`kv_transfer.transport.BaseKvTransport`), so
the control plane of a mocker fleet is exactly the torch engine's. Time =
blocks x bytes per block / `--kv-transfer-bandwidth` (GB/s), divided by
`--speedup-ratio` like every other mocker time; bytes per block come from the
mocker's model shape (`--kv-bytes-per-token` x block size).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ..kv_transfer.transport import BaseKvTransport, PeerInfo, TransferError, TransferStats


class SimulatedTransport(BaseKvTransport):
    """Sleeps bytes / bandwidth of simulated time per transfer, on the event loop."""

    name = "simulated"

    def __init__(self, bytes_per_block: int, gbps: float, speedup_ratio: float = 1.0) -> None:
        if bytes_per_block <= 0 or gbps <= 0 or speedup_ratio <= 0:
            raise ValueError("bytes_per_block, bandwidth and speedup_ratio must be positive")
        self.bytes_per_block = bytes_per_block
        self.gbps = gbps
        self.speedup_ratio = speedup_ratio

    def seconds_for(self, num_blocks: int) -> float:
        """Simulated seconds to move `num_blocks` blocks."""
        return num_blocks * self.bytes_per_block / (self.gbps * 1e9) / self.speedup_ratio

    async def send_blocks(
        self,
        peer: PeerInfo,
        src_block_ids: Sequence[int],
        dst_block_ids: Sequence[int],
        *,
        transfer_id: str,
    ) -> TransferStats:
        if len(src_block_ids) != len(dst_block_ids):
            raise TransferError(
                f"{len(src_block_ids)} source blocks for {len(dst_block_ids)} destination blocks"
            )
        started = time.monotonic()
        await asyncio.sleep(self.seconds_for(len(src_block_ids)))
        # The bytes a real transfer would have moved: what the transfer metrics count.
        return TransferStats(len(src_block_ids) * self.bytes_per_block, time.monotonic() - started)
