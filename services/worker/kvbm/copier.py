"""Moving KV blocks between the device pool, the host arena and the disk store, off the step.

The engine thread submits copy ops and collects the finished ones at the start of a step;
the copies themselves run elsewhere: on one copy thread with real bytes (`ThreadCopier` in
thread_copier.py, the torch engine) or as timers on the event loop's clock
(`SimulatedCopier` in sim_copier.py, the mocker). Neither touches the registry: the engine
thread applies each finished op to it. This module holds what both share.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass, replace
from typing import Protocol


class CopyKind(enum.Enum):
    DEVICE_TO_HOST = "device_to_host"
    HOST_TO_DISK = "host_to_disk"
    HOST_TO_DEVICE = "host_to_device"
    DISK_TO_DEVICE = "disk_to_device"
    """Read into a staging buffer and verified there before any byte reaches the device."""
    DISK_DELETE = "disk_delete"
    """Delete a block's file: file operations stay on the copy thread, in submit order."""


SYNC_KINDS = frozenset({CopyKind.DEVICE_TO_HOST, CopyKind.HOST_TO_DEVICE})
"""The kinds `copy_now` does."""

ONBOARD_KINDS = frozenset({CopyKind.HOST_TO_DEVICE, CopyKind.DISK_TO_DEVICE})
"""Copies up, which a request waits for: no copier queues them behind a copy down."""

_NEEDS: dict[CopyKind, tuple[str, ...]] = {
    CopyKind.DEVICE_TO_HOST: ("device_block", "host_slot"),
    CopyKind.HOST_TO_DISK: ("host_slot",),
    CopyKind.HOST_TO_DEVICE: ("host_slot", "device_block"),
    CopyKind.DISK_TO_DEVICE: ("device_block",),
    CopyKind.DISK_DELETE: (),
}


@dataclass(frozen=True, slots=True, eq=False)
class CopyOp:
    """One block to move; the copier sets `ok` and `seconds` when done (nothing else changes).

    Compared by identity: an op is its own handle (`id(op)` keys the caller's bookkeeping).
    """

    kind: CopyKind
    block_hash: int
    device_block: int = -1
    host_slot: int = -1
    local_hash: int = 0
    parent_hash: int | None = None
    ok: bool = False
    seconds: float = 0.0
    """Time the copy itself took (queueing not included): what the manager's cost model learns."""

    def __post_init__(self) -> None:
        missing = [name for name in _NEEDS[self.kind] if getattr(self, name) < 0]
        if missing:
            raise ValueError(f"{self.kind.value} needs {', '.join(missing)}")


def check_sync(op: CopyOp) -> None:
    if op.kind not in SYNC_KINDS:
        raise ValueError(f"copy_now does device <-> host copies only, not {op.kind.value}")


def settle(op: CopyOp, ok: bool, seconds: float = 0.0) -> None:
    # The one write to an op after it was made: frozen keeps the engine thread and the
    # copy thread from changing what the op copies while it is in flight.
    object.__setattr__(op, "seconds", seconds)
    object.__setattr__(op, "ok", ok)


@dataclass(slots=True)
class CopyStats:
    """Totals of one kind of copy since start."""

    ops: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    """Time spent copying (queueing not included): bytes / seconds is the bandwidth had."""


class BlockCopier(Protocol):
    """Moves blocks between tiers. Called from the engine thread only, except `stats`.

    `submit` never blocks on I/O; the op shows up in `completed` once done (ok or not), and
    `on_complete` (given to the implementation) is called then so a sleeping step loop
    wakes. The blocks and slots an op names must not be reused until it completes.
    """

    def submit(self, op: CopyOp) -> None: ...
    def completed(self) -> list[CopyOp]: ...
    def copy_now(self, op: CopyOp) -> None:
        """Do `op` before returning (a device block evicted now); not listed in `completed`.

        Device <-> host copies only (`SYNC_KINDS`): a step never waits on the disk.
        """
        ...

    def take_stall_seconds(self) -> float:
        """Simulated time `copy_now` calls cost since the last call (0 where it was real)."""
        ...

    @property
    def pending(self) -> int: ...
    @property
    def has_completed(self) -> bool: ...
    def close(self) -> None: ...
    def stats(self) -> dict[CopyKind, CopyStats]: ...


class CopyLedger:
    """The bookkeeping both copiers share: finished ops, the pending count, totals."""

    def __init__(self, bytes_per_block: int) -> None:
        self.bytes_per_block = bytes_per_block
        self._lock = threading.Lock()
        self._done: list[CopyOp] = []
        self._pending = 0
        self._stats = {kind: CopyStats() for kind in CopyKind}

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def has_completed(self) -> bool:
        """Ops finished and not collected yet (a plain read: any thread may ask)."""
        return bool(self._done)

    def completed(self) -> list[CopyOp]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def stats(self) -> dict[CopyKind, CopyStats]:
        with self._lock:
            return {kind: replace(s) for kind, s in self._stats.items()}

    def submitted(self) -> None:
        with self._lock:
            self._pending += 1

    def record(self, op: CopyOp, ok: bool, seconds: float, listed: bool) -> None:
        settle(op, ok, seconds)
        with self._lock:
            s = self._stats[op.kind]
            s.ops += 1
            s.failed += not ok
            if ok and op.kind is not CopyKind.DISK_DELETE:
                s.bytes += self.bytes_per_block
            s.seconds += seconds
            if listed:
                self._pending -= 1
                self._done.append(op)
