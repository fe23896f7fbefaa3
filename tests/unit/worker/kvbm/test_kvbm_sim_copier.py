"""The mocker's copier: completion times follow each link's bandwidth; the host links are
full duplex (one per direction) and the disk serves reads before queued writes."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

import pytest
from tandem.worker.kvbm.copier import CopyKind, CopyOp
from tandem.worker.kvbm.sim_copier import SimulatedCopier


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ClockLoop:
    """The two calls the copier makes on an event loop, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, Handle, Callable[..., Any], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Handle:
        handle = Handle()
        heapq.heappush(self._timers, (when, len(self._timers), handle, callback, args))
        return handle

    def advance(self, to: float) -> list[float]:
        """Run the timers due by `to`, in time order; the times they ran at."""
        ran = []
        while self._timers and self._timers[0][0] <= to + 1e-12:
            when, _, handle, callback, args = heapq.heappop(self._timers)
            if not handle.cancelled:
                self.now = when
                callback(*args)
                ran.append(when)
        self.now = to
        return ran


MB = 1_000_000


def make(loop: ClockLoop, calls: list[int]) -> SimulatedCopier:
    # 1 MB blocks, 2 GB/s host link, 0.5 GB/s disk link, simulated 2x faster than real time:
    # 0.25 ms per host copy, 1 ms per disk copy.
    return SimulatedCopier(MB, 2.0, 0.5, 2.0, loop, lambda: calls.append(1))  # type: ignore[arg-type]


def test_each_link_is_fifo_at_its_bandwidth() -> None:
    loop, calls = ClockLoop(), []
    copier = make(loop, calls)
    assert copier.host_seconds == pytest.approx(0.25e-3)
    assert copier.disk_seconds == pytest.approx(1e-3)
    down = [CopyOp(CopyKind.DEVICE_TO_HOST, i, device_block=i, host_slot=i) for i in range(3)]
    to_disk = CopyOp(CopyKind.HOST_TO_DISK, 9, host_slot=0)
    from_disk = CopyOp(CopyKind.DISK_TO_DEVICE, 9, device_block=5)
    for op in [*down, to_disk, from_disk]:
        copier.submit(op)
    assert copier.pending == 5
    ran = loop.advance(1.0)
    # Host link: back to back from 0; disk link: its own queue, not behind the host copies.
    assert ran == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 2e-3])
    assert copier.completed() == [*down, to_disk, from_disk]
    assert all(op.ok for op in [*down, to_disk, from_disk])
    assert len(calls) == 5 and copier.pending == 0
    # An idle link starts a new copy now, not where it last finished.
    late = CopyOp(CopyKind.HOST_TO_DEVICE, 1, host_slot=1, device_block=1)
    copier.submit(late)
    assert loop.advance(2.0) == pytest.approx([1.0 + 0.25e-3])
    assert copier.completed() == [late]
    stats = copier.stats()
    assert stats[CopyKind.DEVICE_TO_HOST].bytes == 3 * MB
    assert stats[CopyKind.HOST_TO_DISK].seconds == pytest.approx(1e-3)


def test_an_onboard_never_waits_behind_offloads() -> None:
    loop, calls = ClockLoop(), []
    copier = make(loop, calls)
    down = [CopyOp(CopyKind.DEVICE_TO_HOST, i, device_block=i, host_slot=i) for i in range(40)]
    for op in down:
        copier.submit(op)
    loop.advance(0.1e-3)  # the write-through backlog is 10 ms deep now
    up = CopyOp(CopyKind.HOST_TO_DEVICE, 99, host_slot=50, device_block=50)
    copier.submit(up)
    ran = loop.advance(0.1e-3 + copier.host_seconds)
    # Its own 0.25 ms after its submission, on the other direction's link; only the first
    # offload finished meanwhile.
    assert ran == pytest.approx([0.25e-3, 0.35e-3])
    assert copier.completed() == [down[0], up] and up.ok
    assert up.seconds == pytest.approx(copier.host_seconds)
    # The offloads kept their own pace: back to back from 0, the last at 40 x 0.25 ms.
    ran = loop.advance(1.0)
    assert len(ran) == 39 and ran[-1] == pytest.approx(40 * 0.25e-3)
    assert copier.completed() == down[1:]


def test_a_disk_read_waits_only_for_the_write_in_progress() -> None:
    loop, calls = ClockLoop(), []
    copier = make(loop, calls)
    writes = [CopyOp(CopyKind.HOST_TO_DISK, i, host_slot=i) for i in range(1, 4)]
    for op in writes:
        copier.submit(op)
    loop.advance(0.5e-3)  # the first is half done, two more queued
    read = CopyOp(CopyKind.DISK_TO_DEVICE, 1, device_block=0)
    copier.submit(read)
    copier.submit(CopyOp(CopyKind.DISK_DELETE, 9))  # no link: done at once
    assert loop.advance(1.0) == pytest.approx([0.5e-3, 1e-3, 2e-3, 3e-3, 4e-3])
    assert [op.kind for op in copier.completed()] == [
        CopyKind.DISK_DELETE,
        CopyKind.HOST_TO_DISK,
        CopyKind.DISK_TO_DEVICE,  # ahead of the two queued writes
        CopyKind.HOST_TO_DISK,
        CopyKind.HOST_TO_DISK,
    ]
    # Reads and writes share the drive: five copies took five copies' time.
    stats = copier.stats()
    assert stats[CopyKind.HOST_TO_DISK].seconds == pytest.approx(3e-3)
    assert read.seconds == pytest.approx(1e-3)


def test_copy_now_is_a_stall_taken_once() -> None:
    loop, calls = ClockLoop(), []
    copier = make(loop, calls)
    op = CopyOp(CopyKind.DEVICE_TO_HOST, 1, device_block=0, host_slot=0)
    copier.copy_now(op)
    copier.copy_now(CopyOp(CopyKind.DEVICE_TO_HOST, 2, device_block=1, host_slot=1))
    assert op.ok and copier.completed() == [] and calls == []
    assert copier.take_stall_seconds() == pytest.approx(0.5e-3)
    assert copier.take_stall_seconds() == 0.0
    with pytest.raises(ValueError):
        copier.copy_now(CopyOp(CopyKind.HOST_TO_DISK, 3, host_slot=0))


def test_close_cancels_the_copies_in_flight() -> None:
    loop, calls = ClockLoop(), []
    copier = make(loop, calls)
    ops = [
        CopyOp(CopyKind.HOST_TO_DISK, 1, host_slot=0),  # in progress
        CopyOp(CopyKind.HOST_TO_DISK, 2, host_slot=1),  # queued
        CopyOp(CopyKind.DISK_TO_DEVICE, 3, device_block=0),
        CopyOp(CopyKind.DEVICE_TO_HOST, 4, device_block=1, host_slot=2),
        CopyOp(CopyKind.DISK_DELETE, 5),
    ]
    for op in ops:
        copier.submit(op)
    copier.close()
    assert loop.advance(1.0) == [] and calls == [] and copier.pending == 0
    assert not any(op.ok for op in ops) and copier.completed() == []
