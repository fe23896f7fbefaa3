"""bench/trace_replay.py's command line and table, without a cluster."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import trace_replay  # noqa: E402 - bench/ is not a package


def test_local_workers_get_a_long_context_unless_one_is_given() -> None:
    assert trace_replay.local_worker_args(["--speedup-ratio", "2"]) == [
        "--context-length", "131072", "--speedup-ratio", "2",
    ]  # fmt: skip
    given = ["--context-length", "4096"]
    assert trace_replay.local_worker_args(given) == given
    assert trace_replay.local_worker_args(["--context-length=4096"]) == ["--context-length=4096"]


def test_unknown_flags_are_refused_without_a_local_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        trace_replay.main(["--url", "http://127.0.0.1:1", "--trace", "t", "--num-kv-blocks", "9"])
    assert "unrecognized arguments: --num-kv-blocks 9" in capsys.readouterr().err


def test_table_has_one_row_per_result_and_lists_errors() -> None:
    result = trace_replay.ReplayResult(
        "kv", sent=4, ok=3, ttft=[0.1, 0.2, 0.3], itl=[0.01], late=[0.0], wall=2.0,
        output_tokens=30, prompt_tokens=400, cached_tokens=100,
        errors=collections.Counter({"HTTP 400 context_length_exceeded": 1}),
    )  # fmt: skip
    lines = trace_replay.format_table([result, trace_replay.ReplayResult("round-robin")])
    rows = lines.splitlines()
    assert rows[2].split()[:6] == ["kv", "4", "3", "1", "1.50", "15"]
    assert "25.0%" in rows[2]
    assert rows[3].split()[:4] == ["round-robin", "0", "0", "0"]
    assert "kv errors: 1 x HTTP 400 context_length_exceeded" in lines
