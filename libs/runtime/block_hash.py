"""Block hashing: the one implementation that workers, routers and KVBM all call.

Token ids are cut into blocks of `block_size`; only full blocks are hashed. The
local hash of a block is XXH3-64 over its token ids as little-endian u32; the
sequence hash chains them: seq[0] = local[0], seq[i] = XXH3-64(seq[i-1] as LE
u64 || local[i] as LE u64). Both use the same seed (1337 by default; a LoRA
adapter or tenant salt changes it). These match the hashes Dynamo's router and
vLLM/SGLang KV events use, so indexes fed by either agree.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import xxhash

BLOCK_HASH_SEED = 1337
_PAIR = struct.Struct("<QQ")
_xxh3 = xxhash.xxh3_64_intdigest
_SWAP = sys.byteorder != "little"
assert array.array("I").itemsize == 4, "block hashing needs a 4-byte unsigned int"


def _pack_u32(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian u32 bytes; array.array is ~3x faster than numpy for lists."""
    if isinstance(token_ids, np.ndarray):
        return np.asarray(token_ids, dtype="<u4").tobytes()
    packed = array.array("I", token_ids)
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


class BlockHashes(NamedTuple):
    """Hashes of the full blocks of one token sequence, in order."""

    local: list[int]
    sequence: list[int]


def local_block_hash(token_ids: Sequence[int], seed: int = BLOCK_HASH_SEED) -> int:
    """XXH3-64 of one block's token ids packed as little-endian u32."""
    return _xxh3(np.asarray(token_ids, dtype="<u4").tobytes(), seed)


def chain_hash(parent_hash: int | None, local_hash: int, seed: int = BLOCK_HASH_SEED) -> int:
    """Sequence hash of a block given its parent's sequence hash (None for the first block)."""
    if parent_hash is None:
        return local_hash
    return _xxh3(_PAIR.pack(parent_hash, local_hash), seed)


def hash_blocks(
    token_ids: Sequence[int],
    block_size: int,
    seed: int = BLOCK_HASH_SEED,
    parent_hash: int | None = None,
) -> BlockHashes:
    """Local and chained sequence hashes of every full block of `token_ids`.

    `parent_hash` continues an existing chain (the sequence hash of the block
    that precedes `token_ids[0]`); the partial tail block is never hashed.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    num_full = len(token_ids) // block_size
    if num_full == 0:
        return BlockHashes([], [])
    packed = _pack_u32(token_ids[: num_full * block_size])
    stride = block_size * 4
    local = [_xxh3(packed[i * stride : (i + 1) * stride], seed) for i in range(num_full)]
    sequence: list[int] = []
    prev = parent_hash
    for h in local:
        prev = h if prev is None else _xxh3(_PAIR.pack(prev, h), seed)
        sequence.append(prev)
    return BlockHashes(local, sequence)


def sequence_hashes(
    token_ids: Sequence[int], block_size: int, seed: int = BLOCK_HASH_SEED
) -> list[int]:
    """Chained sequence hashes of the full blocks of `token_ids` (what routers look up)."""
    return hash_blocks(token_ids, block_size, seed).sequence
