"""Scheduler states of disaggregated serving: parked on the decode side, pinned on the prefill side.

And the mocker's engine hooks built on them: a request parked, resumed with a
remote first token, gets the tokens it would have got prefilled locally.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tandem.worker.block_manager import BlockManager
from tandem.worker.disagg.sim_transport import SimulatedTransport
from tandem.worker.engine import EngineOutput, EngineRequest, SamplingConfig
from tandem.worker.kv_event_sink import RecordingSink
from tandem.worker.kv_transfer.transport import PeerInfo
from tandem.worker.mocker.config import MockerConfig
from tandem.worker.mocker.engine import MockerEngine
from tandem.worker.scheduler import ScheduledBatch, Scheduler
from tandem.worker.scheduler_config import SchedulerConfig
from tandem.worker.sequence import Sequence, SequenceStatus


def _seq(rid: str, n: int, start: int = 0, **kw: Any) -> Sequence:
    return Sequence(
        request_id=rid,
        token_ids=list(range(start, start + n)),
        params=SamplingConfig(),
        max_new_tokens=kw.pop("max_new_tokens", 100),
        max_len=10_000,
        **kw,
    )


def _run(sched: Scheduler[Sequence], token: int = 7) -> ScheduledBatch[Sequence]:
    batch = sched.schedule()
    sched.postprocess(batch, [token] * len(batch.sampled))
    return batch


def _sched(num_blocks: int = 64, sink: RecordingSink | None = None) -> Scheduler[Sequence]:
    return Scheduler(BlockManager(num_blocks, 16, sink), SchedulerConfig(8, 64, watermark=0.0))


def test_parked_sequence_holds_its_blocks_and_is_never_scheduled() -> None:
    sched = _sched()
    running = _seq("running", 10)
    sched.add(running)
    _run(sched)
    parked = _seq("parked", 100, start=1000)
    assert sched.park(parked)
    assert parked.status is SequenceStatus.PARKED
    assert parked.table is not None and len(parked.table.block_ids) == 7  # all of its prompt
    for _ in range(5):
        batch = _run(sched)
        assert batch.decodes == [running] and not batch.prefills  # other streams keep stepping
    assert sched.stats().num_running == 2
    assert sched.block_manager.num_active_blocks == 1 + 7


def test_resume_remote_marks_the_received_blocks_computed_and_decodes_on() -> None:
    sink = RecordingSink()
    sched = _sched(sink=sink)
    seq = _seq("remote", 40)
    assert sched.park(seq)
    assert sched.resume_remote(seq, first_token=5)
    assert seq.status is SequenceStatus.RUNNING
    assert seq.token_ids[-1] == 5 and seq.num_computed_tokens == 40
    # Its two full blocks are resident now (their KV arrived): published like computed ones.
    stored = [blocks for kind, (_, blocks) in sink.events if kind == "stored"]  # type: ignore[misc]
    assert sum(map(len, stored)) == 2
    batch = _run(sched)
    assert batch.decodes == [seq] and not batch.prefills  # no prompt token computed here
    assert seq.num_output_tokens == 2


def test_resume_local_prefills_it_here_and_a_late_completion_is_refused() -> None:
    sched = _sched()
    seq = _seq("local", 40)
    assert sched.park(seq)
    assert sched.resume_local(seq)
    batch = _run(sched)
    assert batch.prefills == [(seq, 40)]
    assert not sched.resume_remote(seq, first_token=5)  # too late: not parked any more
    assert not sched.resume_local(seq)


def test_park_refuses_when_the_blocks_do_not_fit() -> None:
    sched = _sched(num_blocks=4)
    seq = _seq("big", 100)
    assert not sched.park(seq)
    assert seq.table is None and seq.status is SequenceStatus.WAITING


def test_aborting_a_parked_sequence_frees_its_blocks() -> None:
    sched = _sched()
    seq = _seq("gone", 40)
    assert sched.park(seq)
    sched.finish(seq, "abort")
    assert sched.block_manager.num_active_blocks == 0
    assert not sched.parked


def test_prefill_only_sequence_keeps_its_blocks_pinned_until_released() -> None:
    sched = _sched()
    seq = _seq("prefill", 40, max_new_tokens=1, pin_blocks=True)
    sched.add(seq)
    _run(sched)
    assert seq.is_finished and seq.finish_reason == "length"
    assert seq in sched.pinned and sched.block_manager.num_active_blocks == 3
    sched.release(seq)
    assert sched.block_manager.num_active_blocks == 0
    assert sched.block_manager.num_cached_blocks == 2  # full blocks stay in the prefix cache


def _mocker() -> MockerEngine:
    return MockerEngine(MockerConfig(num_kv_blocks=256, speedup_ratio=1000.0))


async def _collect(engine: MockerEngine, request: EngineRequest, *, parked: bool) -> list[int]:
    outputs: list[EngineOutput] = []
    done = asyncio.Event()

    def listener(out: EngineOutput) -> None:
        outputs.append(out)
        if out.finish_reason is not None:
            done.set()

    if parked:
        prefill = _mocker()
        await prefill.start()
        _, handle = engine.submit_parked(request, listener)
        assert handle is not None and handle.num_cached_tokens == 0
        assert len(handle.dst_block_ids) == 7
        result = await prefill.prefill_only(request)
        assert prefill.scheduler.block_manager.num_active_blocks == 7  # pinned until sent
        transport = prefill.kv_transport()
        stats = await transport.send_blocks(
            PeerInfo("d", ""), result.block_ids, handle.dst_block_ids, transfer_id="j"
        )
        assert stats.num_bytes == 7 * 16 * 131072
        result.release()
        assert prefill.scheduler.block_manager.num_active_blocks == 0
        assert engine.resume_parked(handle, result.first_token, result.logprob)
        await prefill.stop()
    else:
        engine.submit(request, listener)
    await asyncio.wait_for(done.wait(), 10)
    return [t for out in outputs for t in out.token_ids]


async def test_mocker_remote_prefill_gives_the_tokens_of_a_local_one() -> None:
    request = EngineRequest("r", list(range(100, 200)), SamplingConfig(max_tokens=8))
    local, remote = _mocker(), _mocker()
    await local.start()
    await remote.start()
    try:
        expected = await _collect(local, request, parked=False)
        got = await _collect(remote, request, parked=True)
    finally:
        await local.stop()
        await remote.stop()
    assert got == expected and len(got) == 8


def test_simulated_transfer_time_is_bytes_over_bandwidth() -> None:
    transport = SimulatedTransport(bytes_per_block=2_000_000, gbps=4.0, speedup_ratio=2.0)
    assert transport.seconds_for(10) == 20e6 / 4e9 / 2.0
