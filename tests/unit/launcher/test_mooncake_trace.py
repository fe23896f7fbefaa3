"""tandem.launcher.mooncake_trace: trace records and the token ids their hash ids stand for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tandem.launcher.mooncake_trace import (
    FIRST_TOKEN_ID,
    TraceRecord,
    block_token_ids,
    parse_record,
    prompt_token_ids,
    read_trace,
)


def record(hash_ids: list[int], input_length: int, output_length: int = 4) -> TraceRecord:
    return TraceRecord(0.0, input_length, output_length, tuple(hash_ids))


def test_read_trace_parses_fields_skips_blank_lines_and_stops_at_limit(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    lines = [
        {"timestamp": 0, "input_length": 600, "output_length": 7, "hash_ids": [0, 1]},
        {"timestamp": 1500, "input_length": 10, "output_length": 1, "hash_ids": [0]},
        {"timestamp": 2500, "input_length": 10, "output_length": 1, "hash_ids": [5]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]))

    records = list(read_trace(path))
    assert records[0] == TraceRecord(0.0, 600, 7, (0, 1))
    assert records[1].arrival_s == 1.5
    assert [r.hash_ids for r in records] == [(0, 1), (0,), (5,)]
    assert len(list(read_trace(path, limit=2))) == 2


@pytest.mark.parametrize(
    "line",
    [
        '{"timestamp": 0, "input_length": 5, "hash_ids": [1]}',
        '{"timestamp": 0, "input_length": 0, "output_length": 1, "hash_ids": [1]}',
        '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": []}',
        '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [-1]}',
    ],
)
def test_malformed_records_are_refused(line: str) -> None:
    with pytest.raises(ValueError):
        parse_record(line)


def test_equal_hash_ids_give_equal_tokens_at_the_same_positions() -> None:
    a = prompt_token_ids(record([7, 8, 9], 1536), block_tokens=512)
    b = prompt_token_ids(record([7, 8, 10], 1536), block_tokens=512)
    assert a[:1024] == b[:1024]
    assert a[1024:] != b[1024:]
    # A prompt that is a prefix in hash ids is a prefix in tokens.
    assert prompt_token_ids(record([7], 300), block_tokens=512) == a[:300]


@pytest.mark.parametrize("input_length", [1, 511, 512, 513, 1000, 1536])
def test_prompt_has_exactly_input_length_tokens(input_length: int) -> None:
    ids = prompt_token_ids(record([3, 4, 5], input_length), block_tokens=512)
    assert len(ids) == input_length
    # Plain ints, as a tokenizer gives them (not numpy scalars from the cached words).
    assert {type(t) for t in ids} == {int}
    assert ids == [t for h in (3, 4, 5) for t in block_token_ids(h, 512)][:input_length]


def test_missing_hash_ids_are_padded_with_blocks_of_their_own() -> None:
    short = prompt_token_ids(record([3], 1200), block_tokens=512)
    assert len(short) == 1200
    assert short[:512] == list(block_token_ids(3, 512))
    assert short[512:1024] != short[:512]


def test_different_hash_ids_give_different_blocks() -> None:
    vocab = 1000
    span = vocab - FIRST_TOKEN_ID
    # Neighbours, and ids that agree modulo the base of the spelled-out head.
    ids = [*range(2000), span * 3 + 5, span * 4 + 5]
    blocks = {block_token_ids(h, 16, vocab) for h in ids}
    assert len(blocks) == len(ids)


def test_token_ids_stay_within_the_vocabulary_and_off_the_special_ids() -> None:
    for vocab in (FIRST_TOKEN_ID + 2, 100, 49152, 128256):
        ids = prompt_token_ids(record(list(range(20)), 20 * 64), block_tokens=64, vocab_size=vocab)
        assert min(ids) >= FIRST_TOKEN_ID
        assert max(ids) < vocab
    with pytest.raises(ValueError):
        block_token_ids(1, 16, FIRST_TOKEN_ID + 1)


def test_blocks_are_the_same_in_another_process_and_change_with_the_seed() -> None:
    code = (
        "import tandem.launcher.mooncake_trace as m; "
        "print(list(m.block_token_ids(12345, 64, 49152, 7)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == list(block_token_ids(12345, 64, 49152, 7))
    assert block_token_ids(12345, 64, 49152, 8) != block_token_ids(12345, 64, 49152, 7)
