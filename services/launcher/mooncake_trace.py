"""Mooncake-format traces: read the JSONL records and turn each into prompt token ids.

A Mooncake trace line is one request: `timestamp` (ms from the start of the
trace), `input_length` and `output_length` (tokens) and `hash_ids`, one id per
`block_tokens`-token block of the prompt, where equal ids mean equal block
content. `prompt_token_ids` makes that true of real token ids: each hash id
maps, deterministically, to its own block of ids, so requests that share
leading hash ids share a token prefix and a prefix cache really hits.

Used by the live replay (`bench/trace_replay.py`) and the fleet simulator
(`fleet_sim.py`), so both read a trace into the same requests.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# Mooncake's block size: one hash id covers this many prompt tokens.
DEFAULT_BLOCK_TOKENS = 512
# Ids below this are left out of prompts: special tokens (BOS/EOS/padding) live there.
FIRST_TOKEN_ID = 32


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One request of a trace: when it arrives, how long its prompt and output are,
    and which blocks its prompt is made of."""

    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    @property
    def arrival_s(self) -> float:
        return self.timestamp_ms / 1000.0


def parse_record(line: str) -> TraceRecord:
    """One JSONL line as a record; ValueError on a missing or malformed field."""
    raw = json.loads(line)
    try:
        record = TraceRecord(
            timestamp_ms=float(raw["timestamp"]),
            input_length=int(raw["input_length"]),
            output_length=int(raw["output_length"]),
            hash_ids=tuple(int(h) for h in raw["hash_ids"]),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a Mooncake trace record: {line.strip()[:200]}") from exc
    if record.input_length <= 0 or record.output_length <= 0 or not record.hash_ids:
        raise ValueError(f"empty prompt or output in trace record: {line.strip()[:200]}")
    if any(h < 0 for h in record.hash_ids):
        raise ValueError(f"negative hash id in trace record: {line.strip()[:200]}")
    return record


def read_trace(path: str | Path, limit: int | None = None) -> Iterator[TraceRecord]:
    """The records of a JSONL trace in file order (blank lines skipped), at most `limit`."""
    count = 0
    with open(path) as f:
        for line in f:
            if limit is not None and count >= limit:
                return
            if line.strip():
                yield parse_record(line)
                count += 1


# 4 bytes a token: 64 Ki blocks of 512 tokens are 128 MiB, enough for an hour of a busy trace.
@lru_cache(maxsize=65536)
def _block_words(hash_id: int, block_tokens: int, vocab_size: int, seed: int) -> bytes:
    """The block's token ids as native-order u32 words (see `block_token_ids`).

    Cached as bytes, not ints: a prompt is joined from its blocks' bytes and
    turned into ints in one call, and a cached block costs 4 bytes a token
    rather than the 36 of a tuple of ints.
    """
    span = vocab_size - FIRST_TOKEN_ID
    if span < 2:
        raise ValueError(f"vocab_size must exceed {FIRST_TOKEN_ID + 1}")
    if block_tokens < 2:
        raise ValueError("block_tokens must be at least 2")
    rng = random.Random((seed << 64) | hash_id)
    words = np.empty(block_tokens, dtype=np.uint32)
    words[0] = FIRST_TOKEN_ID + hash_id % span
    words[1] = FIRST_TOKEN_ID + (hash_id // span) % span
    # Native-order u32 words, vectorised (a long trace builds millions of these ids).
    np.remainder(np.frombuffer(rng.randbytes(4 * (block_tokens - 2)), np.uint32), span, words[2:])
    words[2:] += FIRST_TOKEN_ID
    return words.tobytes()


def block_token_ids(
    hash_id: int, block_tokens: int = DEFAULT_BLOCK_TOKENS, vocab_size: int = 49152, seed: int = 0
) -> tuple[int, ...]:
    """The `block_tokens` token ids of the block named `hash_id`, within [FIRST_TOKEN_ID, vocab_size).

    The first two ids spell `hash_id` in base (vocab_size - FIRST_TOKEN_ID), so two
    different ids (below that base squared) never give the same block; the rest are
    drawn from a generator seeded by (seed, hash_id), so the content is the same in
    every process and run.
    """
    words = _block_words(hash_id, block_tokens, vocab_size, seed)
    return tuple(np.frombuffer(words, np.uint32).tolist())


def prompt_token_ids(
    record: TraceRecord,
    block_tokens: int = DEFAULT_BLOCK_TOKENS,
    vocab_size: int = 49152,
    seed: int = 0,
) -> list[int]:
    """Exactly `record.input_length` ids: the blocks of its hash ids in order, the last one cut.

    A record with fewer hash ids than its length needs (a malformed trace) is
    padded with blocks of its own, named past every real id by its last one.
    """
    num_blocks = -(-record.input_length // block_tokens)
    hash_ids = list(record.hash_ids[:num_blocks])
    while len(hash_ids) < num_blocks:
        hash_ids.append(2**40 + hash_ids[-1] * 1024 + len(hash_ids))
    words = b"".join(_block_words(h, block_tokens, vocab_size, seed) for h in hash_ids)
    ids: list[int] = np.frombuffer(words, np.uint32)[: record.input_length].tolist()
    return ids
