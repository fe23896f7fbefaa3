from __future__ import annotations

import asyncio

from tandem.runtime.wire.kv_events_pb2 import LoadMetrics
from tandem.worker.engine import EngineStats
from tandem.worker.load_reporter import LoadReporter


class Recorder:
    def __init__(self) -> None:
        self.sent: list[LoadMetrics] = []
        self.arrived = asyncio.Event()

    async def publish_load(self, metrics: LoadMetrics) -> None:
        self.sent.append(metrics)
        self.arrived.set()


async def test_reports_at_start_on_change_and_as_heartbeat() -> None:
    stats = EngineStats(100, 10, 5, 2, 1, 300, 0.5)
    transport = Recorder()
    reporter = LoadReporter("w1", lambda: stats, transport, interval=0.2, min_interval=0.01)
    reporter.start()
    try:
        await asyncio.wait_for(transport.arrived.wait(), 1)
        first = transport.sent[0]
        assert (first.instance_id, first.total_blocks, first.active_blocks) == ("w1", 100, 10)
        assert (first.num_running, first.num_waiting, first.pending_prefill_tokens) == (2, 1, 300)
        assert first.timestamp > 0
        stats.active_blocks = 20
        transport.arrived.clear()
        reporter.poke()
        await asyncio.wait_for(transport.arrived.wait(), 0.15)  # before the heartbeat is due
        assert transport.sent[-1].active_blocks == 20
        transport.arrived.clear()
        await asyncio.wait_for(transport.arrived.wait(), 1)  # heartbeat without a poke
    finally:
        await reporter.stop()


async def test_pokes_are_coalesced() -> None:
    transport = Recorder()
    reporter = LoadReporter(
        "w1", lambda: EngineStats(1, 0, 0, 0, 0, 0, 0.0), transport, interval=10, min_interval=0.1
    )
    reporter.start()
    try:
        await asyncio.wait_for(transport.arrived.wait(), 1)
        for _ in range(100):
            reporter.poke()
        transport.arrived.clear()
        await asyncio.wait_for(transport.arrived.wait(), 1)
        assert len(transport.sent) == 2
    finally:
        await reporter.stop()
