"""The mocker's copier: no bytes, each copy a timer on the event loop's clock."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .copier import CopyKind, CopyLedger, CopyOp, check_sync, settle

_HOST_KINDS = (CopyKind.DEVICE_TO_HOST, CopyKind.HOST_TO_DEVICE)


class _Link:
    """One simulated channel: serves one copy at a time, reads (`urgent`) before writes.

    Not preemptive: an urgent copy waits for the copy in service, never for queued ones.
    Back-to-back copies start where the previous one was due, not when its timer ran, so
    timer lateness does not slow the simulated bandwidth.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, finish: Callable[[CopyOp], None]) -> None:
        self._loop = loop
        self._finish = finish
        self._urgent: deque[tuple[CopyOp, float]] = deque()
        self._queued: deque[tuple[CopyOp, float]] = deque()
        self._busy: tuple[asyncio.TimerHandle, CopyOp] | None = None

    def submit(self, op: CopyOp, seconds: float, urgent: bool) -> None:
        (self._urgent if urgent else self._queued).append((op, seconds))
        if self._busy is None:
            self._start(self._loop.time())

    def close(self) -> list[CopyOp]:
        """Stop; the copies in service and queued, none of which will complete."""
        ops = [op for op, _ in (*self._urgent, *self._queued)]
        self._urgent.clear()
        self._queued.clear()
        if self._busy is not None:
            handle, op = self._busy
            handle.cancel()
            ops.append(op)
            self._busy = None
        return ops

    def _start(self, at: float) -> None:
        queue = self._urgent or self._queued
        if not queue:
            self._busy = None
            return
        op, seconds = queue.popleft()
        due = at + seconds
        self._busy = (self._loop.call_at(due, self._done, op, due), op)

    def _done(self, op: CopyOp, due: float) -> None:
        self._start(due)
        self._finish(op)


class SimulatedCopier(CopyLedger):
    """Owns the mocker's simulated links and the timers of the copies on them.

    Host: device -> host (DEVICE_TO_HOST) and host -> device (HOST_TO_DEVICE) are two
    independent links, as PCIe is full duplex, so an onboard never waits behind the
    write-through offloads. Disk: one drive for both directions (HOST_TO_DISK writes,
    DISK_TO_DEVICE reads, whose device leg the disk read dwarfs), since an NVMe drive's
    bandwidth is shared by reads and writes, unlike PCIe's; reads go first (a read waits at
    most for the one write in progress), as a request waits on a read while a write only
    keeps a host block busy. Each link runs one copy at a time, bytes / bandwidth / speedup
    seconds each; bandwidths are in GB/s (10^9 bytes per second). DISK_DELETE finishes at
    once. Runs on the event loop's thread, as the mocker does.
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
        self._links = {
            kind: _Link(loop, self._finish)
            for kind in (CopyKind.DEVICE_TO_HOST, CopyKind.HOST_TO_DEVICE, CopyKind.HOST_TO_DISK)
        }
        self._links[CopyKind.DISK_TO_DEVICE] = self._links[CopyKind.HOST_TO_DISK]
        self._deletes: dict[int, tuple[asyncio.TimerHandle, CopyOp]] = {}
        self._stall = 0.0

    def duration(self, kind: CopyKind) -> float:
        """Seconds one op of `kind` occupies its link."""
        if kind is CopyKind.DISK_DELETE:
            return 0.0
        if kind in _HOST_KINDS:
            return self.host_seconds
        return self.disk_seconds

    def submit(self, op: CopyOp) -> None:
        self.submitted()
        if op.kind is CopyKind.DISK_DELETE:
            self._deletes[id(op)] = (self._loop.call_at(self._loop.time(), self._finish, op), op)
            return
        urgent = op.kind is CopyKind.DISK_TO_DEVICE
        self._links[op.kind].submit(op, self.duration(op.kind), urgent)

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
        for link in {id(link): link for link in self._links.values()}.values():
            for op in link.close():
                settle(op, False)
        for handle, op in self._deletes.values():
            handle.cancel()
            settle(op, False)
        self._deletes.clear()
        self._pending = 0

    def _finish(self, op: CopyOp) -> None:
        self._deletes.pop(id(op), None)
        self.record(op, True, self.duration(op.kind), listed=True)
        self._on_complete()
