"""A worker's KV memory as the data plane sees it: byte regions per (layer, block).

The torch engine hands over its per-layer cache tensors (`TorchEngine.kv_pool`);
nothing else of the engine is reachable from here. Reads and writes go
through numpy views of host memory (or torch copies for CUDA tensors), so they
are plain memcpys that never take the engine's torch thread pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .layout import KvLayout


def layout_of(tensors: Sequence[torch.Tensor], block_size: int) -> KvLayout:
    """The layout of per-layer tensors shaped [num_blocks, block_size, 2, kv_heads, head_dim]."""
    first = tensors[0]
    num_blocks, bs, two, kv_heads, head_dim = first.shape
    if bs != block_size or two != 2:
        raise ValueError(f"KV tensor shape {tuple(first.shape)} is not a paged KV cache")
    return KvLayout(
        block_size=block_size,
        num_layers=len(tensors),
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=str(first.dtype).removeprefix("torch."),
        num_blocks=num_blocks,
    )


def block_regions(
    bases: np.ndarray | Sequence[int], layout: KvLayout, device_id: int, block_ids: Sequence[int]
) -> np.ndarray:
    """[layers * len(block_ids), 3] (address, length, device) rows, layer-major.

    Two pools of one layout list their regions in the same order, so row i of
    the sender's list pairs with row i of the receiver's.
    """
    bpl = layout.bytes_per_layer_block
    base = np.asarray(bases, dtype=np.uint64)
    ids = np.asarray(block_ids, dtype=np.uint64)
    addrs = (base[:, None] + ids[None, :] * np.uint64(bpl)).reshape(-1)
    rows = np.empty((addrs.shape[0], 3), dtype=np.uint64)
    rows[:, 0] = addrs
    rows[:, 1] = bpl
    rows[:, 2] = device_id
    return rows


class KvPool:
    """Owns nothing but views: the engine's KV tensors, their layout and block addressing."""

    def __init__(self, tensors: Sequence[torch.Tensor], layout: KvLayout) -> None:
        if not tensors or any(not t.is_contiguous() for t in tensors):
            raise ValueError("KV tensors must be contiguous")
        self.tensors = list(tensors)
        self.layout = layout
        self.is_cuda = tensors[0].is_cuda
        self.mem_type = "VRAM" if self.is_cuda else "DRAM"
        self.device_id = max(tensors[0].get_device(), 0)
        bpl = layout.bytes_per_layer_block
        # [num_blocks, bytes_per_layer_block] uint8 views, one per layer.
        self._bytes = [t.view(torch.uint8).view(layout.num_blocks, bpl) for t in tensors]
        self._host = None if self.is_cuda else [b.numpy() for b in self._bytes]
        self._bases = np.array([t.data_ptr() for t in tensors], dtype=np.uint64)

    @classmethod
    def of(cls, tensors: Sequence[torch.Tensor], block_size: int) -> KvPool:
        return cls(tensors, layout_of(tensors, block_size))

    @property
    def region_bases(self) -> list[int]:
        """Each layer tensor's address: with the layout, where every block of this pool is."""
        return [int(b) for b in self._bases]

    def regions(self, block_ids: Sequence[int]) -> np.ndarray:
        return block_regions(self._bases, self.layout, self.device_id, block_ids)

    def read(self, block_ids: Sequence[int], prefix: bytes = b"") -> bytes:
        """The blocks' bytes, layer-major: layer 0's regions of every block, then layer 1's, ...

        `prefix` (a message header) goes in front of them in the same buffer,
        so a message's payload is copied once, out of the pool.
        """
        ids = list(block_ids)
        if self._host is None:
            index = torch.tensor(ids, device=self.tensors[0].device)
            parts = torch.stack([b.index_select(0, index) for b in self._bytes])
            return prefix + parts.cpu().numpy().tobytes()
        runs = _runs(ids)
        # One copy, straight from each run of neighbouring blocks into the result.
        return b"".join([prefix, *(host[a:b].data for host in self._host for a, b in runs)])

    def write(self, block_ids: Sequence[int], data: bytes | memoryview) -> None:
        """Write `data` (laid out as `read` returns it) into `block_ids`."""
        ids = list(block_ids)
        bpl = self.layout.bytes_per_layer_block
        expected = len(self._bytes) * len(ids) * bpl
        if len(data) != expected:
            raise ValueError(f"{len(data)} bytes for {len(ids)} blocks, expected {expected}")
        src = np.frombuffer(data, dtype=np.uint8).reshape(len(self._bytes), len(ids), bpl)
        if self._host is None:
            index = torch.tensor(ids, device=self.tensors[0].device)
            staged = torch.from_numpy(src.copy()).to(self.tensors[0].device)
            for layer, view in enumerate(self._bytes):
                view.index_copy_(0, index, staged[layer])
            return
        runs = _runs(ids)
        for layer, host in enumerate(self._host):
            done = 0
            for a, b in runs:  # slices: plain memcpys, unlike a fancy-indexed assignment
                host[a:b] = src[layer, done : done + b - a]
                done += b - a


def _runs(ids: list[int]) -> list[tuple[int, int]]:
    """`ids` as [start, stop) runs of consecutive ids, in order (what one slice can copy)."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
