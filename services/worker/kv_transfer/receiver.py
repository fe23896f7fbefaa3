"""The decode side's gate: KV lands only in blocks whose owner waits for that transfer.

A transfer is identified by the prefill job's id. The decode worker announces
it (`expect`) with the destination blocks before publishing the job, and
ends it (`withdraw`) when it stops waiting or has what it waited for. A
transfer nobody expects, one already withdrawn, or one naming other blocks is
refused before a byte is written; `withdraw` returns only once no write into
the blocks is in flight, so the blocks can then be reused safely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class TransferRefused(Exception):
    """This transfer may not write into this pool (unknown, withdrawn, other blocks)."""


@dataclass(slots=True)
class Expectation:
    dst_block_ids: tuple[int, ...]
    landed: bool = False
    withdrawn: bool = False
    writing: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class KvReceiver:
    """Owns the expected transfers of one worker (event loop only)."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._expected: dict[str, Expectation] = {}

    def expect(self, transfer_id: str, dst_block_ids: Sequence[int]) -> None:
        """Accept one transfer named `transfer_id` into exactly `dst_block_ids` (in that order)."""
        entry = Expectation(tuple(dst_block_ids))
        entry.idle.set()
        self._expected[transfer_id] = entry

    async def withdraw(self, transfer_id: str) -> None:
        """Stop accepting `transfer_id`; returns once no write of it is in flight.

        Call it once for every `expect`: when the transfer landed, timed out,
        or the request ended. A write in flight is bounded by the transfer timeout.
        """
        entry = self._expected.pop(transfer_id, None)
        if entry is None:
            return
        entry.withdrawn = True
        await entry.idle.wait()

    def landed(self, transfer_id: str) -> bool:
        """True once every block of `transfer_id` is in the pool (until it is withdrawn)."""
        entry = self._expected.get(transfer_id)
        return entry is not None and entry.landed

    @property
    def num_expected(self) -> int:
        return len(self._expected)

    def begin(self, transfer_id: str, dst_block_ids: Sequence[int], sender: str) -> Expectation:
        """Claim `transfer_id` for writing; raises `TransferRefused` (and logs why)."""
        entry = self._expected.get(transfer_id)
        reason = ""
        if entry is None:
            reason = "not expected (unknown or withdrawn)"
        elif entry.landed or entry.writing:
            reason = "already received"
        elif tuple(dst_block_ids) != entry.dst_block_ids:
            reason = "destination blocks differ from the expected ones"
        if reason or entry is None:
            log.warning(
                "kv transfer refused transfer_id=%s instance_id=%s sender=%s reason=%r",
                transfer_id,
                self.instance_id,
                sender,
                reason,
            )
            raise TransferRefused(f"transfer {transfer_id}: {reason}")
        entry.writing += 1
        entry.idle.clear()
        return entry

    def still_wanted(self, entry: Expectation) -> bool:
        return not entry.withdrawn

    def end(self, entry: Expectation, ok: bool) -> None:
        entry.writing -= 1
        if ok and not entry.withdrawn:
            entry.landed = True
        if not entry.writing:
            entry.idle.set()
