"""The torch engine's copier: one thread copying real bytes between the tiers."""

from __future__ import annotations

import ctypes
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kv_transfer.layout import KvLayout
from .copier import ONBOARD_KINDS, CopyKind, CopyLedger, CopyOp, check_sync
from .disk_store import DiskStore

if TYPE_CHECKING:
    import torch

    from .host_arena import HostArena

log = logging.getLogger(__name__)


class ThreadCopier(CopyLedger):
    """Owns one daemon copy thread and its queue; copies real bytes between the tiers.

    The queue runs copies up (`ONBOARD_KINDS`, a request waits for them) before copies
    down and file deletions, each class in submit order, so an onboard waits at most for
    the one copy in progress, never for a backlog of write-through offloads. Reordering is
    safe: an op's blocks and slots are no other queued op's (`BlockCopier`), and a block
    file is read only once its write completed, while deletions and writes keep their order.

    CPU tensors: each layer's region is one `ctypes.memmove` between data pointers, which
    releases the GIL and starts no OpenMP team (the torch engine keeps all torch ops on its
    one thread: a second team slows its steps). CUDA tensors: torch copies on a side stream
    that first waits for the work the engine queued before the submit; this path is not
    exercised by the tests, which run without a GPU.
    """

    def __init__(
        self,
        kv_cache: Sequence[torch.Tensor],
        layout: KvLayout,
        arena: HostArena,
        disk: DiskStore | None,
        on_complete: Callable[[], None],
    ) -> None:
        super().__init__(layout.bytes_per_block)
        bpl = layout.bytes_per_layer_block
        for t in kv_cache:
            if not t.is_contiguous() or t.numel() * t.element_size() != layout.num_blocks * bpl:
                raise ValueError("KV tensors must be contiguous and match the layout")
        if len(kv_cache) != layout.num_layers:
            raise ValueError(f"{len(kv_cache)} KV tensors for {layout.num_layers} layers")
        self.layout = layout
        self._arena = arena
        self._disk = disk
        self._on_complete = on_complete
        self._bpl = bpl
        self._bases = [t.data_ptr() for t in kv_cache]
        self._cuda: _CudaCopies | None = (
            _CudaCopies(kv_cache, layout) if kv_cache[0].is_cuda else None
        )
        # Where DISK_TO_DEVICE reads and verifies a block before it touches the device.
        staging = (
            self._cuda.staging.numpy() if self._cuda else np.empty(self.bytes_per_block, np.uint8)
        )
        self._staging = staging.data
        self._staging_address = staging.ctypes.data
        # (class, submit order, op or None to stop, CUDA event): lowest first.
        self._queue: queue.PriorityQueue[tuple[int, int, CopyOp | None, Any]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="kvbm-copier", daemon=True)
        self._thread.start()

    def submit(self, op: CopyOp) -> None:
        self._check(op)
        self.submitted()
        event = self._cuda.after_queued_work() if self._cuda else None
        self._queue.put((0 if op.kind in ONBOARD_KINDS else 1, next(self._order), op, event))

    def copy_now(self, op: CopyOp) -> None:
        check_sync(op)  # and the staging buffer stays the copy thread's alone
        self._check(op)
        event = self._cuda.after_queued_work() if self._cuda else None
        ok, seconds = self._execute(op, event)
        self.record(op, ok, seconds, listed=False)

    def take_stall_seconds(self) -> float:
        return 0.0

    def close(self) -> None:
        """Finish the op in progress, drop the queued ones (ok=False), stop the thread."""
        if self._closing:
            return
        self._closing = True
        self._queue.put((2, next(self._order), None, None))  # after every queued op
        self._thread.join()

    # -- the copy thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            _, _, op, event = self._queue.get()
            if op is None:
                return
            if self._closing:
                self.record(op, False, 0.0, listed=True)
                continue
            ok, seconds = self._execute(op, event)
            self.record(op, ok, seconds, listed=True)
            try:
                self._on_complete()
            except Exception:  # a closed loop at shutdown; the copier keeps going
                log.exception("kvbm copier on_complete failed")

    def _execute(self, op: CopyOp, event: Any) -> tuple[bool, float]:
        start = time.perf_counter()
        try:
            ok = self._copy(op, event)
        except Exception:
            log.exception("kvbm copy failed kind=%s block_hash=%016x", op.kind.value, op.block_hash)
            ok = False
        return ok, time.perf_counter() - start

    def _copy(self, op: CopyOp, event: Any) -> bool:
        kind = op.kind
        if kind is CopyKind.DEVICE_TO_HOST:
            self._between(op.device_block, op.host_slot, to_host=True, event=event)
        elif kind is CopyKind.HOST_TO_DEVICE:
            self._between(op.device_block, op.host_slot, to_host=False, event=event)
        elif kind is CopyKind.HOST_TO_DISK:
            view = self._arena.view(op.host_slot)
            self._need_disk().write(op.block_hash, op.local_hash, op.parent_hash, view)
        elif kind is CopyKind.DISK_TO_DEVICE:
            if not self._need_disk().read_into(op.block_hash, self._staging):
                return False
            self._from_staging(op.device_block, event)
        else:
            self._need_disk().delete(op.block_hash)
        return True

    def _between(self, device_block: int, slot: int, to_host: bool, event: Any) -> None:
        if self._cuda is not None:
            self._cuda.between(device_block, self._arena.slot_tensor(slot), to_host, event)
            return
        bpl, host = self._bpl, self._arena.address(slot)
        for layer, base in enumerate(self._bases):
            dev = base + device_block * bpl
            dst, src = (host + layer * bpl, dev) if to_host else (dev, host + layer * bpl)
            ctypes.memmove(dst, src, bpl)

    def _from_staging(self, device_block: int, event: Any) -> None:
        if self._cuda is not None:
            self._cuda.between(device_block, self._cuda.staging, False, event)
            return
        bpl, src = self._bpl, self._staging_address
        for layer, base in enumerate(self._bases):
            ctypes.memmove(base + device_block * bpl, src + layer * bpl, bpl)

    def _need_disk(self) -> DiskStore:
        if self._disk is None:
            raise RuntimeError("a disk copy on a worker without a disk tier")
        return self._disk

    def _check(self, op: CopyOp) -> None:
        # A bad id would be a memmove to a wild address: refuse it on the caller's thread.
        if op.device_block >= self.layout.num_blocks:
            raise IndexError(f"device block {op.device_block} outside {self.layout.num_blocks}")
        if op.host_slot >= self._arena.capacity:
            raise IndexError(f"host slot {op.host_slot} outside {self._arena.capacity}")
        if op.kind in (CopyKind.HOST_TO_DISK, CopyKind.DISK_TO_DEVICE, CopyKind.DISK_DELETE):
            self._need_disk()


class _CudaCopies:
    """The CUDA half of ThreadCopier: per-layer byte views, a side stream, pinned staging."""

    def __init__(self, kv_cache: Sequence[torch.Tensor], layout: KvLayout) -> None:
        import torch

        self._torch = torch
        bpl = layout.bytes_per_layer_block
        self._bpl = bpl
        self._layers = [t.view(torch.uint8).view(layout.num_blocks, bpl) for t in kv_cache]
        self._stream = torch.cuda.Stream(device=kv_cache[0].device)
        self.staging = torch.empty(layout.bytes_per_block, dtype=torch.uint8, pin_memory=True)

    def after_queued_work(self) -> Any:
        """An event on the calling thread's stream: the copy waits for what was queued so far
        (the step that wrote the block being offloaded)."""
        event = self._torch.cuda.Event()
        event.record()
        return event

    def between(self, device_block: int, host: torch.Tensor, to_host: bool, event: Any) -> None:
        bpl = self._bpl
        with self._torch.cuda.stream(self._stream):
            self._stream.wait_event(event)
            for layer, view in enumerate(self._layers):
                part = host[layer * bpl : (layer + 1) * bpl]
                if to_host:
                    part.copy_(view[device_block], non_blocking=True)
                else:
                    view[device_block].copy_(part, non_blocking=True)
        # Done means done: the caller may read the slot, reuse the staging buffer or let a
        # step read the device block as soon as the op is reported.
        self._stream.synchronize()
