"""The mocker's copier: no bytes, each copy a timer on the event loop's clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .copier import CopyKind, CopyLedger, CopyOp, check_sync, settle

_HOST_LINK = (CopyKind.DEVICE_TO_HOST, CopyKind.HOST_TO_DEVICE)


class SimulatedCopier(CopyLedger):
    """Owns the mocker's two simulated links and the timers of the copies on them.

    Host link: device <-> host memory (DEVICE_TO_HOST, HOST_TO_DEVICE). Disk link: host
    <-> disk (HOST_TO_DISK, DISK_TO_DEVICE, whose device leg the disk read dwarfs). Each
    link is FIFO: an op finishes at max(now, link free) + bytes / bandwidth / speedup.
    Bandwidths are in GB/s (10^9 bytes per second). DISK_DELETE finishes at once. Runs on
    the event loop's thread, as the mocker does.
    """

    def __init__(
        self,
        bytes_per_block: int,
        host_gbps: float,
        disk_gbps: float,
        speedup_ratio: float,
        loop: asyncio.AbstractEventLoop,
        on_complete: Callable[[], None],
    ) -> None:
        if bytes_per_block <= 0 or host_gbps <= 0 or disk_gbps <= 0 or speedup_ratio <= 0:
            raise ValueError("block bytes, bandwidths and speedup ratio must be positive")
        super().__init__(bytes_per_block)
        self.host_seconds = bytes_per_block / (host_gbps * 1e9) / speedup_ratio
        self.disk_seconds = bytes_per_block / (disk_gbps * 1e9) / speedup_ratio
        self._loop = loop
        self._on_complete = on_complete
        self._host_free_at = 0.0
        self._disk_free_at = 0.0
        self._timers: dict[int, tuple[asyncio.TimerHandle, CopyOp]] = {}
        self._stall = 0.0

    def duration(self, kind: CopyKind) -> float:
        """Seconds one op of `kind` occupies its link."""
        if kind is CopyKind.DISK_DELETE:
            return 0.0
        if kind in _HOST_LINK:
            return self.host_seconds
        return self.disk_seconds

    def submit(self, op: CopyOp) -> None:
        now = self._loop.time()
        seconds = self.duration(op.kind)
        if op.kind is CopyKind.DISK_DELETE:
            due = now
        elif op.kind in _HOST_LINK:
            due = self._host_free_at = max(now, self._host_free_at) + seconds
        else:
            due = self._disk_free_at = max(now, self._disk_free_at) + seconds
        self.submitted()
        handle = self._loop.call_at(due, self._finish, op, seconds)
        self._timers[id(op)] = (handle, op)

    def copy_now(self, op: CopyOp) -> None:
        """Counts the copy's time as a stall of the step; it does not queue on the link."""
        check_sync(op)
        seconds = self.duration(op.kind)
        self._stall += seconds
        self.record(op, True, seconds, listed=False)

    def take_stall_seconds(self) -> float:
        stall, self._stall = self._stall, 0.0
        return stall

    def close(self) -> None:
        """Cancel the copies still in flight (they never complete)."""
        for handle, op in self._timers.values():
            handle.cancel()
            settle(op, False)
        self._timers.clear()
        self._pending = 0

    def _finish(self, op: CopyOp, seconds: float) -> None:
        self._timers.pop(id(op), None)
        self.record(op, True, seconds, listed=True)
        self._on_complete()
