"""bench/trace_replay.py against a real cluster: a small generated trace with shared prefixes,
replayed open loop through the frontend to a mocker worker, every request answered and
the shared prefixes found in the worker's prefix cache."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.launcher.mooncake_trace import TraceRecord

from tests.e2e.openai_cluster import MODEL, Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import trace_replay  # noqa: E402 - bench/ is not a package

BLOCK_TOKENS = 32
NUM_GROUPS = 3
NUM_REQUESTS = 15
SHARED_BLOCKS = 2


def small_trace() -> list[TraceRecord]:
    """Three groups of requests; a group's requests share two leading blocks, then differ."""
    records = []
    for i in range(NUM_REQUESTS):
        group = i % NUM_GROUPS
        shared = [group * 10 + b for b in range(SHARED_BLOCKS)]
        records.append(
            TraceRecord(
                timestamp_ms=100.0 * i,
                input_length=SHARED_BLOCKS * BLOCK_TOKENS + 10 + i,
                output_length=2 + i % 4,
                hash_ids=(*shared, 1000 + i),
            )
        )
    return records


@pytest.fixture(scope="module")
def cluster(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(infra, tmp_path_factory.mktemp("replay-logs"))
    try:
        c.start_workers(1)
        c.start_frontend(wait_workers=1)
        yield c
    finally:
        c.stop()


async def test_replay_answers_every_request_and_hits_the_shared_prefixes(
    cluster: Cluster,
) -> None:
    records = small_trace()
    # One request in flight at a time, so each group's first request has finished
    # (and cached its blocks) before the next of its group is admitted.
    config = trace_replay.ReplayConfig(
        speedup=100.0, max_concurrency=1, block_tokens=BLOCK_TOKENS, drain_timeout=60
    )
    result = await trace_replay.replay(cluster.url, MODEL, records, config)

    assert dict(result.errors) == {}
    assert result.sent == result.ok == NUM_REQUESTS
    assert len(result.ttft) == NUM_REQUESTS
    assert result.itl
    # The engine saw exactly the lengths the trace asked for.
    assert result.prompt_tokens == sum(r.input_length for r in records)
    assert result.output_tokens == sum(r.output_length for r in records)
    # Repeats of a group reuse its shared blocks; nothing else can be cached.
    shared_tokens = SHARED_BLOCKS * BLOCK_TOKENS * (NUM_REQUESTS - NUM_GROUPS)
    assert 0 < result.cached_tokens <= shared_tokens
    assert result.cached_fraction > 0


def test_command_line_prints_one_row_without_errors(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "trace.jsonl"
    lines = [
        json.dumps(
            {
                "timestamp": r.timestamp_ms,
                "input_length": r.input_length,
                "output_length": r.output_length,
                "hash_ids": list(r.hash_ids),
            }
        )
        for r in small_trace()
    ]
    path.write_text("\n".join(lines) + "\n")
    trace_replay.main(
        ["--url", cluster.url, "--trace", str(path), "--speedup", "100",
         "--max-requests", "6", "--block-tokens", str(BLOCK_TOKENS)]
    )  # fmt: skip
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(cluster.url))
    sent, ok, err = row.split()[1:4]
    assert (sent, ok, err) == ("6", "6", "0")
    assert "errors:" not in out
