"""Host memory for the host tier: one preallocated buffer of fixed-size block slots.

Slot i starts at byte i * bytes_per_block and holds one device block as layer 0's region,
then layer 1's, ... (each `bytes_per_layer_block`), the order `KvPool.read` uses for one
block, so a slot is also what a block file's payload holds.
"""

from __future__ import annotations

import numpy as np
import torch

from ..kv_transfer.layout import KvLayout


class HostArena:
    """Owns the host tier's buffer: `capacity` slots of `layout.bytes_per_block` bytes."""

    def __init__(self, layout: KvLayout, capacity: int, pin_memory: bool | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"a host arena needs a positive capacity, got {capacity}")
        self.layout = layout
        self.capacity = capacity
        self.bytes_per_block = layout.bytes_per_block
        if pin_memory is None:
            # Pinned pages make device<->host copies DMA straight from/to the slot; without
            # a GPU there is nothing to pin for (and pinning needs CUDA).
            pin_memory = torch.cuda.is_available()
        # torch.empty, not zeros: pages are committed as slots are first written, so a large
        # host tier costs memory only as it fills (pinned memory is committed at once).
        self.tensor = torch.empty(
            capacity * self.bytes_per_block, dtype=torch.uint8, pin_memory=pin_memory
        )
        self._slots: np.ndarray = self.tensor.numpy().reshape(capacity, self.bytes_per_block)
        self._base = self.tensor.data_ptr()

    @property
    def nbytes(self) -> int:
        return self.capacity * self.bytes_per_block

    def view(self, slot: int) -> memoryview:
        """The slot's bytes, writable, without a copy."""
        self._check(slot)
        return memoryview(self._slots[slot])

    def slot_tensor(self, slot: int) -> torch.Tensor:
        """The slot as a uint8 tensor view (for torch copies to and from a GPU)."""
        self._check(slot)
        start = slot * self.bytes_per_block
        return self.tensor[start : start + self.bytes_per_block]

    def address(self, slot: int) -> int:
        """The slot's first byte in this process's memory (for memmove, NIXL registration)."""
        self._check(slot)
        return self._base + slot * self.bytes_per_block

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self.capacity:
            raise IndexError(f"host slot {slot} outside an arena of {self.capacity}")
