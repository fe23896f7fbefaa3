"""The host arena and the copy thread, on small real CPU KV tensors."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tandem.worker.kv_transfer.layout import KvLayout
from tandem.worker.kvbm.copier import CopyKind, CopyOp
from tandem.worker.kvbm.disk_store import DiskStore, file_name, layout_fingerprint
from tandem.worker.kvbm.host_arena import HostArena
from tandem.worker.kvbm.thread_copier import ThreadCopier

LAYOUT = KvLayout(
    block_size=4, num_layers=2, num_kv_heads=2, head_dim=8, dtype="float32", num_blocks=6
)


class Completions:
    """Counts on_complete calls; waits for a number of them (no sleeps)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0

    def __call__(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.count >= n, timeout=30), self.count


def kv_cache() -> list[torch.Tensor]:
    shape = (LAYOUT.num_blocks, LAYOUT.block_size, 2, LAYOUT.num_kv_heads, LAYOUT.head_dim)
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=gen) for _ in range(LAYOUT.num_layers)]


def block_bytes(cache: list[torch.Tensor], block: int) -> bytes:
    return b"".join(t[block].numpy().tobytes() for t in cache)


@dataclass
class Setup:
    copier: ThreadCopier
    cache: list[torch.Tensor]
    arena: HostArena
    disk: DiskStore
    done: Completions


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    cache = kv_cache()
    arena = HostArena(LAYOUT, 3)
    disk = DiskStore(str(tmp_path), layout_fingerprint(LAYOUT, "m"), LAYOUT.bytes_per_block)
    done = Completions()
    copier = ThreadCopier(cache, LAYOUT, arena, disk, done)
    yield Setup(copier, cache, arena, disk, done)
    copier.close()


def run(copier: ThreadCopier, done: Completions, *ops: CopyOp) -> list[CopyOp]:
    before = done.count
    for op in ops:
        copier.submit(op)
    done.wait(before + len(ops))
    finished = copier.completed()
    assert finished == list(ops) and copier.pending == 0  # in submit order, each once
    return finished


def test_arena_slots_hold_a_block_layer_by_layer() -> None:
    arena = HostArena(LAYOUT, 2, pin_memory=False)
    bpb = LAYOUT.bytes_per_block
    assert arena.address(1) - arena.address(0) == bpb and arena.nbytes == 2 * bpb
    view = arena.view(1)
    view[:] = bytes(range(256)) * (bpb // 256)
    assert ctypes.string_at(arena.address(1), bpb) == bytes(view)
    assert bytes(arena.slot_tensor(1).numpy()) == bytes(view)
    with pytest.raises(IndexError):
        arena.view(2)


def test_device_to_host_to_disk_to_device_gives_identical_bytes(
    setup: Setup,
) -> None:
    copier, cache, disk, done = setup.copier, setup.cache, setup.disk, setup.done
    original = block_bytes(cache, 1)
    h = 0xABC
    run(copier, done, CopyOp(CopyKind.DEVICE_TO_HOST, h, device_block=1, host_slot=2))
    # The slot is the block's layer 0 region, then its layer 1 region.
    assert bytes(setup.arena.view(2)) == original
    run(copier, done, CopyOp(CopyKind.HOST_TO_DISK, h, host_slot=2, local_hash=7, parent_hash=5))
    assert list(disk.scan()) == [(h, 7, 5)]
    ops = run(
        copier,
        done,
        CopyOp(CopyKind.DISK_TO_DEVICE, h, device_block=3),
        CopyOp(CopyKind.HOST_TO_DEVICE, h, host_slot=2, device_block=4),
    )
    assert all(op.ok for op in ops)
    assert block_bytes(cache, 3) == original and block_bytes(cache, 4) == original
    assert block_bytes(cache, 0) != original  # the neighbours are untouched
    stats = copier.stats()
    assert stats[CopyKind.DISK_TO_DEVICE].bytes == LAYOUT.bytes_per_block
    assert stats[CopyKind.DEVICE_TO_HOST].ops == 1 and stats[CopyKind.DEVICE_TO_HOST].failed == 0


def test_a_corrupt_file_fails_its_op_and_never_reaches_the_device(
    setup: Setup,
) -> None:
    copier, cache, disk, done = setup.copier, setup.cache, setup.disk, setup.done
    disk.write(0x1, 1, None, block_bytes(cache, 0))
    path = Path(disk.path) / file_name(0x1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(data)
    before = block_bytes(cache, 5)
    (op,) = run(copier, done, CopyOp(CopyKind.DISK_TO_DEVICE, 0x1, device_block=5))
    assert not op.ok and block_bytes(cache, 5) == before and not path.exists()
    # The thread survives a failed op: the next one goes through.
    (missing,) = run(copier, done, CopyOp(CopyKind.DISK_TO_DEVICE, 0x1, device_block=5))
    (later,) = run(copier, done, CopyOp(CopyKind.DEVICE_TO_HOST, 0x2, device_block=0, host_slot=0))
    assert not missing.ok and later.ok
    assert copier.stats()[CopyKind.DISK_TO_DEVICE].failed == 2


def test_copy_now_is_done_on_return_and_not_listed(
    setup: Setup,
) -> None:
    copier, cache, done = setup.copier, setup.cache, setup.done
    op = CopyOp(CopyKind.DEVICE_TO_HOST, 0x3, device_block=2, host_slot=1)
    copier.copy_now(op)
    assert op.ok and bytes(setup.arena.view(1)) == block_bytes(cache, 2)
    assert copier.completed() == [] and done.count == 0 and copier.take_stall_seconds() == 0.0
    with pytest.raises(ValueError):  # a step never waits on the disk
        copier.copy_now(CopyOp(CopyKind.DISK_TO_DEVICE, 0x3, device_block=2))


def test_bad_ops_are_refused_on_the_callers_thread(tmp_path: Path) -> None:
    cache = kv_cache()
    copier = ThreadCopier(cache, LAYOUT, HostArena(LAYOUT, 2), None, lambda: None)
    try:
        with pytest.raises(IndexError):
            copier.submit(CopyOp(CopyKind.DEVICE_TO_HOST, 1, device_block=6, host_slot=0))
        with pytest.raises(IndexError):
            copier.submit(CopyOp(CopyKind.HOST_TO_DEVICE, 1, device_block=0, host_slot=2))
        with pytest.raises(RuntimeError):  # no disk tier
            copier.submit(CopyOp(CopyKind.HOST_TO_DISK, 1, host_slot=0))
        with pytest.raises(ValueError):  # a host copy needs its slot
            CopyOp(CopyKind.DEVICE_TO_HOST, 1, device_block=0)
        assert copier.pending == 0
    finally:
        copier.close()
    with pytest.raises(ValueError):
        ThreadCopier(cache[:1], LAYOUT, HostArena(LAYOUT, 2), None, lambda: None)


def test_close_settles_every_op_and_stops_the_thread(
    setup: Setup,
) -> None:
    copier = setup.copier
    ops = [CopyOp(CopyKind.DEVICE_TO_HOST, i, device_block=i, host_slot=i % 3) for i in range(6)]
    for op in ops:
        copier.submit(op)
    copier.close()
    assert not copier._thread.is_alive()
    assert copier.completed() == ops and copier.pending == 0  # done or dropped (ok=False)


def test_onboards_go_before_queued_offloads_and_deletions(tmp_path: Path) -> None:
    cache = kv_cache()
    arena = HostArena(LAYOUT, 3)
    disk = DiskStore(str(tmp_path), layout_fingerprint(LAYOUT, "m"), LAYOUT.bytes_per_block)
    disk.write(0x9, 1, None, block_bytes(cache, 5))
    gate, done = threading.Event(), Completions()

    def on_complete() -> None:
        done()
        assert gate.wait(timeout=30)  # holds the copy thread after its first op

    copier = ThreadCopier(cache, LAYOUT, arena, disk, on_complete)
    try:
        first = CopyOp(CopyKind.DEVICE_TO_HOST, 0x1, device_block=0, host_slot=0)
        copier.submit(first)
        done.wait(1)  # the thread is parked in on_complete: what follows only queues
        down = [
            CopyOp(CopyKind.DEVICE_TO_HOST, 0x2, device_block=1, host_slot=1),
            CopyOp(CopyKind.HOST_TO_DISK, 0x1, host_slot=0),
            CopyOp(CopyKind.DISK_DELETE, 0x7),
        ]
        up = [
            CopyOp(CopyKind.HOST_TO_DEVICE, 0x1, host_slot=0, device_block=3),
            CopyOp(CopyKind.DISK_TO_DEVICE, 0x9, device_block=4),
        ]
        for op in [*down, *up]:
            copier.submit(op)
        gate.set()
        done.wait(6)
        # The copies up first (in their submit order), then the rest in theirs.
        assert copier.completed() == [first, *up, *down]
        assert all(op.ok for op in [first, *up, *down])
        assert block_bytes(cache, 3) == block_bytes(cache, 0)
        assert block_bytes(cache, 4) == block_bytes(cache, 5)
        assert all(op.seconds > 0 for op in up)
    finally:
        copier.close()
