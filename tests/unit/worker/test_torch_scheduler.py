"""Scheduler: token budget, chunked prefill, admission, preemption by recompute (no model)."""

from __future__ import annotations

from tandem.worker.block_manager import BlockManager
from tandem.worker.engine import SamplingConfig
from tandem.worker.torch_engine.scheduler import Scheduler, Sequence, SequenceStatus


def _seq(rid: str, n: int, start: int = 0) -> Sequence:
    return Sequence(rid, list(range(start, start + n)), SamplingConfig(), max_new_tokens=100)


def _run(sched: Scheduler) -> None:
    """Pretend the model ran: advance the scheduled sequences, sample token 7 at their end."""
    batch = sched.schedule()
    for seq in batch.decodes:
        seq.num_computed_tokens += 1
        seq.token_ids.append(7)
    for seq, n in batch.prefills:
        seq.num_computed_tokens += n
        if seq.num_remaining == 0:
            seq.token_ids.append(7)


def test_long_prompt_is_chunked_and_decodes_keep_running() -> None:
    sched = Scheduler(BlockManager(64, 16), max_num_seqs=8, max_num_batched_tokens=32)
    short = _seq("short", 10)
    sched.add(short)
    _run(sched)
    assert short.num_output_tokens == 1
    long = _seq("long", 100, start=1000)
    sched.add(long)
    chunks = []
    while long.num_output_tokens == 0:
        batch = sched.schedule()
        assert batch.decodes == [short]  # the decode is never starved by the long prefill
        assert batch.num_tokens <= 32
        chunks.append(batch.prefills[0][1])
        for seq in batch.decodes:
            seq.num_computed_tokens += 1
            seq.token_ids.append(7)
        for seq, n in batch.prefills:
            seq.num_computed_tokens += n
            if seq.num_remaining == 0:
                seq.token_ids.append(7)
    assert chunks == [31, 31, 31, 7]


def test_max_num_seqs_limits_the_batch() -> None:
    sched = Scheduler(BlockManager(64, 16), max_num_seqs=2, max_num_batched_tokens=512)
    for i in range(3):
        sched.add(_seq(f"r{i}", 5, start=100 * i))
    batch = sched.schedule()
    assert len(batch.prefills) == 2 and len(sched.waiting) == 1


def test_out_of_blocks_preempts_the_newest_and_requeues_it() -> None:
    bm = BlockManager(4, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    a, b = _seq("a", 8), _seq("b", 8, start=50)
    sched.add(a)
    sched.add(b)
    _run(sched)  # both prefilled: 2 blocks each, pool full
    assert bm.num_available_blocks == 0
    _run(sched)  # a needs a third block for its 9th token: b is preempted
    assert sched.num_preemptions == 1
    assert b.status is SequenceStatus.WAITING and sched.waiting[0] is b
    assert b.table is None and b.num_computed_tokens == 0
    assert a.num_output_tokens == 2
    sched.abort("a")
    _run(sched)  # b comes back and recomputes prompt + its output so far
    assert b.status is SequenceStatus.RUNNING and b.num_output_tokens == 2


def test_abort_frees_blocks() -> None:
    bm = BlockManager(16, 4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    sched.add(_seq("a", 10))
    _run(sched)
    assert bm.num_active_blocks == 3
    assert sched.abort("a") is not None
    assert bm.num_active_blocks == 0 and not sched.has_work
