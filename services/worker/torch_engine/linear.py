"""Matmuls of a frozen model: oneDNN pre-packed weights where the CPU has native bf16.

Packing the weights once for AMX / AVX512-BF16 (what torch.compile's freezing
pass does) makes small-batch bf16 matmuls 1.5-2x faster than F.linear, which
re-lays the weights out on every call. Results are bit-identical to F.linear.
The residual add is not fused into the packed matmul (`_linear_pointwise.binary`):
on an AVX512-BF16 CPU without AMX that op returned sums off by up to 128 for
the down projection (1536 inputs) at batch > 1, and the engine answered
nonsense. Everywhere else plain F.linear is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_PACK_BATCH_HINT = 32


def can_pack(dtype: torch.dtype, device: torch.device) -> bool:
    if device.type != "cpu" or dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Linears:
    """Prepares weight matrices once and runs `x @ w.T` (optionally `+ residual`) with them."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.packed = can_pack(dtype, device)

    def prepare(self, weight: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_BATCH_HINT)
        return weight

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
        return F.linear(x, weight)

    def add(self, residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """`residual + x @ weight.T`."""
        return residual + self(x, weight)
