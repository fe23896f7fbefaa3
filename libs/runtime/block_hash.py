"""Block hashing: the one implementation that workers, routers and KVBM all call.

Token ids are cut into blocks of `block_size`; only full blocks are hashed. The
local hash of a block is XXH3-64 over its token ids as little-endian u32; the
sequence hash chains them: seq[0] = local[0], seq[i] = XXH3-64(seq[i-1] as LE
u64 || local[i] as LE u64). Both use the same seed (1337 by default; a LoRA
adapter or tenant salt changes it). These match the hashes Dynamo's router and
vLLM/SGLang KV events use, so indexes fed by either agree.

Every routing decision hashes its prompt, so this is a hot path: the
token ids are packed into one buffer once (no copy of the list), one
`struct` unpack cuts it into the blocks' bytes and `map` hashes them (no
Python-level step per block), and the chain is one tight loop. What is left
is two XXH3 calls per block (tests/unit/runtime/test_block_hash.py checks
the result against the plain definition). The router hashes lazily
(LazySequenceHashes): only as far as its index walk reads.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Iterator, Sequence
from functools import lru_cache
from itertools import chain, repeat
from typing import NamedTuple

import numpy as np
import xxhash

BLOCK_HASH_SEED = 1337
_UNPACK_BLOCKS = 64  # blocks cut per compiled struct: bounds the formats kept in the cache
FIRST_LAZY_BLOCKS = 32
"""Blocks LazySequenceHashes hashes first; the rest in one more chunk, if read (a chunk has a
fixed cost of a few microseconds, so more, smaller chunks cost a prompt read to its end)."""
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


def _pack_full_blocks(token_ids: Sequence[int], block_size: int) -> bytes:
    """The full blocks of `token_ids` packed as little-endian u32 (the tail is dropped)."""
    full = len(token_ids) // block_size * block_size
    if full == len(token_ids):
        return _pack_u32(token_ids)
    if isinstance(token_ids, np.ndarray):
        return _pack_u32(token_ids[:full])  # a view, not a copy
    try:
        # Packing the tail too and cutting the bytes is cheaper than slicing a long list...
        return _pack_u32(token_ids)[: full * 4]
    except OverflowError:
        # ...but the tail is never hashed, so only the full blocks may refuse a token id.
        return _pack_u32(token_ids[:full])


@lru_cache(maxsize=256)
def _blocks_format(num_blocks: int, stride: int) -> struct.Struct:
    """Unpacks `num_blocks` consecutive blocks of `stride` bytes, each as one bytes object."""
    return struct.Struct(f"{stride}s" * num_blocks)


def _local_hashes(packed: bytes | memoryview, block_size: int, seed: int) -> list[int]:
    stride = block_size * 4
    num_blocks = len(packed) // stride
    whole = num_blocks - num_blocks % _UNPACK_BLOCKS
    # Cutting the buffer with struct (in C) is about half the cost of a slice per block.
    blocks = list(
        chain.from_iterable(
            _blocks_format(_UNPACK_BLOCKS, stride).iter_unpack(memoryview(packed)[: whole * stride])
        )
    )
    blocks += _blocks_format(num_blocks - whole, stride).unpack_from(packed, whole * stride)
    return list(map(_xxh3, blocks, repeat(seed)))


def _chain(local: list[int], parent_hash: int | None, seed: int) -> list[int]:
    if not local:
        return []
    xxh3, pair = _xxh3, _PAIR.pack
    rest = iter(local)
    first = next(rest)
    prev = first if parent_hash is None else xxh3(pair(parent_hash, first), seed)
    sequence = [prev]
    append = sequence.append
    for h in rest:
        prev = xxh3(pair(prev, h), seed)
        append(prev)
    return sequence


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
    local = _local_hashes(_pack_full_blocks(token_ids, block_size), block_size, seed)
    return BlockHashes(local, _chain(local, parent_hash, seed))


def sequence_hashes(
    token_ids: Sequence[int], block_size: int, seed: int = BLOCK_HASH_SEED
) -> list[int]:
    """Chained sequence hashes of the full blocks of `token_ids` (what routers look up)."""
    return hash_blocks(token_ids, block_size, seed).sequence


class LazySequenceHashes:
    """Owns the sequence hashes of one token sequence, computed as they are first read.

    The token ids are packed at once (which also refuses a bad one at once); reading
    hashes the first FIRST_LAZY_BLOCKS blocks, and the rest only if the reader goes on.
    The router's walk ends at the first block no worker holds, which for a prompt
    nobody has seen is within its first blocks: such a decision hashes FIRST_LAZY_BLOCKS
    blocks, not all of them. The values are `sequence_hashes`'s, kept once computed.
    """

    def __init__(
        self, token_ids: Sequence[int], block_size: int, seed: int = BLOCK_HASH_SEED
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self._packed = memoryview(_pack_full_blocks(token_ids, block_size))
        self._block_size = block_size
        self._seed = seed
        self._hashes: list[int] = []
        self.num_blocks = len(token_ids) // block_size

    def __len__(self) -> int:
        return self.num_blocks

    def __iter__(self) -> Iterator[int]:
        return chain.from_iterable(self._chunks())

    def all(self) -> list[int]:
        """Every full block's sequence hash (the list kept inside: do not change it)."""
        while len(self._hashes) < self.num_blocks:
            self._extend()
        return self._hashes

    def _chunks(self) -> Iterator[list[int]]:
        read = 0  # per iterator: another one may have hashed further meanwhile
        while read < self.num_blocks:
            chunk = self._hashes[read:] if read < len(self._hashes) else self._extend()
            read += len(chunk)
            yield chunk

    def _extend(self) -> list[int]:
        done = self._hashes
        start = len(done)
        end = min(self.num_blocks, FIRST_LAZY_BLOCKS) if not start else self.num_blocks
        stride = self._block_size * 4
        local = _local_hashes(
            self._packed[start * stride : end * stride], self._block_size, self._seed
        )
        chunk = _chain(local, done[-1] if done else None, self._seed)
        done += chunk
        return chunk
