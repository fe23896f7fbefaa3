"""The fleet simulator agrees with a live mocker cluster: the same short trace, replayed open loop
through the frontend's kv router to real mocker worker processes and on the simulator with
the same settings, gives TTFT p50 and prefix-cache hit rate within 15 % of each other.

Steps ten times slower than the mocker's default (a prefill step costs 150 ms) keep the
cluster's own CPU time (HTTP, routing, gRPC: a few ms a request) small next to what the
step-time model predicts, even on two busy cores; requests are spaced so that a few
overlap, and the prefix groups make the router's choices matter."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tandem.launcher.fleet_config import FleetConfig
from tandem.launcher.fleet_sim import simulate
from tandem.launcher.local_infra import LocalInfra
from tandem.launcher.mooncake_trace import TraceRecord
from tandem.launcher.trace_summary import format_table, percentile
from tandem.worker.mocker import MockerConfig

from tests.e2e.openai_cluster import MODEL, Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import trace_replay  # noqa: E402 - bench/ is not a package

WORKERS = 3
SPEEDUP_RATIO = 0.1
BLOCK_TOKENS = 64
TOLERANCE = 0.15


def agreement_trace() -> list[TraceRecord]:
    """30 requests 250 ms apart in 4 prefix groups (4 shared blocks, then 1-3 of their own)."""
    records = []
    for i in range(30):
        group = i % 4
        shared = tuple(group * 10 + b for b in range(4))
        own = tuple(1000 + i * 4 + b for b in range(1 + i % 3))
        length = (len(shared) + len(own)) * BLOCK_TOKENS - 7
        records.append(TraceRecord(250.0 * i, length, 3 + i % 4, shared + own))
    return records


@pytest.fixture(scope="module")
def cluster(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(infra, tmp_path_factory.mktemp("agreement-logs"))
    try:
        c.start_workers(WORKERS, SPEEDUP_RATIO)
        c.start_frontend("--router-mode", "kv", wait_workers=WORKERS)
        yield c
    finally:
        c.stop()


def test_simulated_ttft_and_hit_rate_agree_with_a_live_cluster(cluster: Cluster) -> None:
    records = agreement_trace()
    config = trace_replay.ReplayConfig(block_tokens=BLOCK_TOKENS, drain_timeout=60)
    live = asyncio.run(trace_replay.replay(cluster.url, MODEL, records, config, "live"))
    simulated = simulate(
        records,
        FleetConfig(
            workers=WORKERS,
            block_tokens=BLOCK_TOKENS,
            mocker=MockerConfig(speedup_ratio=SPEEDUP_RATIO),
        ),
        "simulated",
    )

    print(f"\n{format_table([live, simulated])}")
    assert dict(live.errors) == {} and dict(simulated.errors) == {}
    assert live.ok == simulated.ok == len(records)
    live_p50, sim_p50 = percentile(live.ttft, 0.5), percentile(simulated.ttft, 0.5)
    assert sim_p50 == pytest.approx(live_p50, rel=TOLERANCE), (live_p50, sim_p50)
    assert simulated.cached_fraction > 0.3  # the groups' repeats hit
    assert simulated.cached_fraction == pytest.approx(live.cached_fraction, rel=TOLERANCE)
