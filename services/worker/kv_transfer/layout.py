"""The shape of a worker's KV blocks, and the check that two workers can exchange them."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

DTYPE_SIZES = {"float32": 4, "bfloat16": 2, "float16": 2}


class PairingError(Exception):
    """Two workers' KV layouts differ: no block may move between them."""


@dataclass(frozen=True, slots=True)
class KvLayout:
    """How one worker's KV pool is laid out: per layer, [num_blocks, block_size, 2, kv_heads, head_dim].

    A block is one contiguous region of `bytes_per_layer_block` in each layer's
    tensor; `bytes_per_block` is all layers together, what one block costs to move.
    """

    block_size: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    num_blocks: int

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_SIZES:
            raise ValueError(f"KV dtype {self.dtype!r} unknown; one of {sorted(DTYPE_SIZES)}")
        for name in ("block_size", "num_layers", "num_kv_heads", "head_dim", "num_blocks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"KvLayout.{name} must be positive")

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def bytes_per_layer_block(self) -> int:
        return self.block_size * 2 * self.num_kv_heads * self.head_dim * self.itemsize

    @property
    def bytes_per_block(self) -> int:
        return self.num_layers * self.bytes_per_layer_block

    @property
    def bytes_per_token(self) -> int:
        return self.bytes_per_block // self.block_size

    def mismatch(self, other: KvLayout) -> str:
        """What differs between the blocks of two layouts ('' if a block of one fits the other)."""
        fields = ("block_size", "num_layers", "num_kv_heads", "head_dim", "dtype")
        return " ".join(
            f"{name}={getattr(self, name)}/{getattr(other, name)}"
            for name in fields
            if getattr(self, name) != getattr(other, name)
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KvLayout:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def check_pairing(
    local: KvLayout, peer: KvLayout, *, local_id: str, peer_id: str, block_ids: list[int]
) -> None:
    """Refuse (log + `PairingError`) a transfer between `local` and `peer` unless their blocks match.

    `block_ids` are the ids this side will touch in its own pool: out of range is refused too.
    """
    reason = local.mismatch(peer)
    if not reason and block_ids and not 0 <= min(block_ids) <= max(block_ids) < local.num_blocks:
        reason = f"block ids outside the pool of {local.num_blocks}"
    if reason:
        log.warning(
            "kv pairing refused instance_id=%s peer=%s reason=%r (local/peer)",
            local_id,
            peer_id,
            reason,
        )
        raise PairingError(f"KV layouts of {local_id} and {peer_id} differ: {reason}")
