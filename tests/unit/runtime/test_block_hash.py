"""Block hashing against an independent pure-Python XXH3-64 (written from the xxHash spec)."""

from __future__ import annotations

import random
import struct
from itertools import islice

import numpy as np
import pytest
import xxhash
from tandem.runtime import block_hash
from tandem.runtime.block_hash import (
    BLOCK_HASH_SEED,
    FIRST_LAZY_BLOCKS,
    LazySequenceHashes,
    chain_hash,
    hash_blocks,
    local_block_hash,
    sequence_hashes,
)

M64 = (1 << 64) - 1
PRIME64_1 = 0x9E3779B185EBCA87
PRIME_MX1 = 0x165667919E3779F9
# First 128 bytes of XXH3's default secret (kSecret); inputs of at most 128 bytes use no more.
K_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
)


def _u64(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<Q", data, offset)[0])


def _fold(a: int, b: int) -> int:
    product = a * b
    return (product & M64) ^ (product >> 64)


def _avalanche(h: int) -> int:
    h ^= h >> 37
    h = (h * PRIME_MX1) & M64
    return h ^ (h >> 32)


def _mix16(data: bytes, offset: int, secret_offset: int, seed: int) -> int:
    lo = _u64(data, offset) ^ ((_u64(K_SECRET, secret_offset) + seed) & M64)
    hi = _u64(data, offset + 8) ^ ((_u64(K_SECRET, secret_offset + 8) - seed) & M64)
    return _fold(lo, hi)


def reference_xxh3_64(data: bytes, seed: int) -> int:
    """XXH3-64 for 9..128-byte inputs: the sizes block hashing produces."""
    n = len(data)
    if 9 <= n <= 16:
        flip1 = ((_u64(K_SECRET, 24) ^ _u64(K_SECRET, 32)) + seed) & M64
        flip2 = ((_u64(K_SECRET, 40) ^ _u64(K_SECRET, 48)) - seed) & M64
        lo = _u64(data, 0) ^ flip1
        hi = _u64(data, n - 8) ^ flip2
        swapped = int.from_bytes(lo.to_bytes(8, "little"), "big")
        return _avalanche((n + swapped + hi + _fold(lo, hi)) & M64)
    if 17 <= n <= 128:
        acc = (n * PRIME64_1) & M64
        if n > 32:
            if n > 64:
                if n > 96:
                    acc += _mix16(data, 48, 96, seed) + _mix16(data, n - 64, 112, seed)
                acc += _mix16(data, 32, 64, seed) + _mix16(data, n - 48, 80, seed)
            acc += _mix16(data, 16, 32, seed) + _mix16(data, n - 32, 48, seed)
        acc += _mix16(data, 0, 0, seed) + _mix16(data, n - 16, 16, seed)
        return _avalanche(acc & M64)
    raise ValueError("reference covers 9..128 bytes only")


def reference_sequence_hashes(tokens: list[int], block_size: int, seed: int) -> list[int]:
    out: list[int] = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = tokens[start : start + block_size]
        local = reference_xxh3_64(struct.pack(f"<{block_size}I", *block), seed)
        out.append(
            local if not out else reference_xxh3_64(struct.pack("<QQ", out[-1], local), seed)
        )
    return out


@pytest.mark.parametrize("block_size", [4, 16, 32])
def test_sequence_hashes_match_independent_reference(block_size: int) -> None:
    rng = random.Random(block_size)
    tokens = [rng.randrange(0, 200_000) for _ in range(block_size * 7 + 3)]
    assert sequence_hashes(tokens, block_size) == reference_sequence_hashes(
        tokens, block_size, 1337
    )


def test_local_hash_is_xxh3_of_le_u32_with_seed_1337() -> None:
    tokens = list(range(16))
    assert local_block_hash(tokens) == reference_xxh3_64(struct.pack("<16I", *tokens), 1337)
    assert BLOCK_HASH_SEED == 1337


def test_partial_tail_is_never_hashed() -> None:
    assert sequence_hashes(list(range(15)), 16) == []
    assert len(sequence_hashes(list(range(33)), 16)) == 2


def test_equal_prefixes_share_hashes_and_divergence_changes_the_rest() -> None:
    a = list(range(64))
    b = list(range(32)) + [999] + list(range(33, 64))
    ha, hb = sequence_hashes(a, 16), sequence_hashes(b, 16)
    assert ha[:2] == hb[:2]
    assert ha[2] != hb[2] and ha[3] != hb[3]  # the chain carries the difference forward


def test_same_block_at_different_positions_has_same_local_but_different_sequence_hash() -> None:
    block = [7] * 16
    hashes = hash_blocks(block * 2, 16)
    assert hashes.local[0] == hashes.local[1]
    assert hashes.sequence[0] != hashes.sequence[1]


def test_seed_changes_every_hash() -> None:
    tokens = list(range(48))
    assert not set(sequence_hashes(tokens, 16)) & set(sequence_hashes(tokens, 16, seed=42))


def test_continuing_a_chain_equals_hashing_the_whole() -> None:
    tokens = list(range(80))
    whole = hash_blocks(tokens, 16)
    tail = hash_blocks(tokens[32:], 16, parent_hash=whole.sequence[1])
    assert whole.sequence[2:] == tail.sequence
    assert chain_hash(None, whole.local[0]) == whole.sequence[0]
    assert chain_hash(whole.sequence[0], whole.local[1]) == whole.sequence[1]


def plain_definition(
    tokens: list[int], block_size: int, seed: int = BLOCK_HASH_SEED, parent: int | None = None
) -> tuple[list[int], list[int]]:
    """docs/contracts.md "Block hashing" written out block by block, for any block size."""
    local, sequence = [], []
    for start in range(0, len(tokens) // block_size * block_size, block_size):
        block = tokens[start : start + block_size]
        h = xxhash.xxh3_64_intdigest(struct.pack(f"<{block_size}I", *block), seed)
        local.append(h)
        if parent is not None:
            h = xxhash.xxh3_64_intdigest(struct.pack("<QQ", parent, h), seed)
        sequence.append(h)
        parent = h
    return local, sequence


@pytest.mark.parametrize("block_size", [1, 3, 16, 64])
def test_fast_path_equals_the_plain_definition_on_random_inputs(block_size: int) -> None:
    rng = random.Random(1000 + block_size)
    # Lengths around block boundaries: empty, below one block, exact fits, partial last blocks.
    lengths = {0, 1, block_size - 1, block_size, block_size + 1, 5 * block_size}
    lengths |= {rng.randrange(0, 40 * block_size) for _ in range(25)}
    for n in sorted(lengths):
        tokens = [rng.randrange(0, 1 << 32) for _ in range(n)]
        local, sequence = plain_definition(tokens, block_size)
        assert hash_blocks(tokens, block_size) == (local, sequence), n
        assert sequence_hashes(tokens, block_size) == sequence, n
        assert sequence_hashes(np.array(tokens, dtype=np.int64), block_size) == sequence, n
        seed = rng.randrange(1 << 64)
        assert (
            sequence_hashes(tokens, block_size, seed)
            == plain_definition(tokens, block_size, seed)[1]
        ), n
        parent = rng.randrange(1 << 64)
        assert hash_blocks(tokens, block_size, parent_hash=parent) == plain_definition(
            tokens, block_size, parent=parent
        ), n


def test_reference_xxh3_agrees_on_partial_last_blocks_of_16_token_blocks() -> None:
    rng = random.Random(16)
    for n in (16 * 250, 16 * 250 + 7, 16 * 3 + 15):
        tokens = [rng.randrange(0, 200_000) for _ in range(n)]
        assert sequence_hashes(tokens, 16) == reference_sequence_hashes(tokens, 16, 1337)


def test_a_token_id_outside_u32_is_refused_in_full_blocks_only() -> None:
    tokens = list(range(32))
    assert sequence_hashes(tokens + [1 << 32], 16) == sequence_hashes(tokens, 16)
    assert sequence_hashes(tokens + [-1], 16) == sequence_hashes(tokens, 16)
    with pytest.raises(OverflowError):
        sequence_hashes([1 << 32] + tokens, 16)


@pytest.mark.parametrize("num_blocks", [63, 64, 65, 128, 130])
def test_blocks_cut_in_struct_chunks_equal_the_plain_definition(num_blocks: int) -> None:
    """The packed buffer is cut 64 blocks per struct call, and the remainder with another."""
    rng = random.Random(num_blocks)
    tokens = [rng.randrange(0, 1 << 32) for _ in range(num_blocks * 4 + 3)]
    assert hash_blocks(tokens, 4) == plain_definition(tokens, 4)


def test_lazy_hashes_equal_the_eager_ones_however_they_are_read() -> None:
    rng = random.Random(5)
    tokens = [rng.randrange(0, 200_000) for _ in range(16 * 100 + 9)]
    eager = sequence_hashes(tokens, 16)
    assert list(LazySequenceHashes(tokens, 16)) == eager
    lazy = LazySequenceHashes(tokens, 16)
    assert len(lazy) == 100
    assert list(islice(lazy, 5)) == eager[:5]
    assert list(lazy) == eager  # read again: from the start, the kept hashes first
    assert LazySequenceHashes(tokens, 16).all() == eager
    assert LazySequenceHashes(np.array(tokens), 16).all() == eager
    assert list(LazySequenceHashes(tokens, 16, seed=42)) == sequence_hashes(tokens, 16, 42)
    assert list(LazySequenceHashes(tokens[:15], 16)) == []


def test_lazy_hashes_read_by_two_iterators_at_once() -> None:
    """Another iterator hashing further in between must neither skip nor repeat blocks."""
    tokens = list(range(16 * 80))
    lazy = LazySequenceHashes(tokens, 16)
    first, second = iter(lazy), iter(lazy)
    head = [next(first) for _ in range(3)]
    assert list(second) == sequence_hashes(tokens, 16)
    assert head + list(first) == sequence_hashes(tokens, 16)


def test_lazy_hashes_hash_only_the_first_chunk_until_read_further(monkeypatch) -> None:
    calls: list[int] = []
    chain = block_hash._chain

    def counting_chain(local: list[int], parent: int | None, seed: int) -> list[int]:
        calls.append(len(local))
        return chain(local, parent, seed)

    tokens = list(range(16 * 250))
    expected = sequence_hashes(tokens, 16)
    monkeypatch.setattr(block_hash, "_chain", counting_chain)
    lazy = LazySequenceHashes(tokens, 16)
    assert next(iter(lazy)) == expected[0]
    assert calls == [FIRST_LAZY_BLOCKS]
    assert lazy.all() == expected
    assert calls == [FIRST_LAZY_BLOCKS, 250 - FIRST_LAZY_BLOCKS]


def test_lazy_hashes_refuse_bad_input_at_once() -> None:
    with pytest.raises(OverflowError):
        LazySequenceHashes([1 << 32] + list(range(31)), 16)
    with pytest.raises(ValueError):
        LazySequenceHashes(list(range(32)), 0)
