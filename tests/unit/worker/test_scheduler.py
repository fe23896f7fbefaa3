"""Scheduler: token budget, chunked prefill, admission, preemption, stop rules (no model)."""

from __future__ import annotations

from typing import Any

from tandem.router.kv_event_follower import KvEventFollower
from tandem.router.radix_index import RadixIndex
from tandem.runtime.block_hash import sequence_hashes
from tandem.worker.block_manager import BlockManager
from tandem.worker.engine import SamplingConfig
from tandem.worker.kv_event_sink import RecordingSink
from tandem.worker.kv_publisher import KvEventPublisher
from tandem.worker.scheduler import ScheduledBatch, Scheduler
from tandem.worker.scheduler_config import SchedulerConfig
from tandem.worker.sequence import Sequence, SequenceStatus


def config(max_num_seqs: int, max_num_batched_tokens: int, **kw: Any) -> SchedulerConfig:
    return SchedulerConfig(
        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, **kw
    )


def _seq(rid: str, n: int, start: int = 0, **kw: Any) -> Sequence:
    kw.setdefault("max_new_tokens", 100)
    kw.setdefault("max_len", 10_000)
    return Sequence(
        request_id=rid,
        token_ids=list(range(start, start + n)),
        params=kw.pop("params", SamplingConfig()),
        **kw,
    )


def _run(sched: Scheduler[Sequence], token: int = 7) -> ScheduledBatch[Sequence]:
    """Pretend the model ran: every sequence that reached its end samples `token`."""
    batch = sched.schedule()
    sched.postprocess(batch, [token] * len(batch.sampled))
    return batch


def test_long_prompt_is_chunked_and_decodes_keep_running() -> None:
    sched: Scheduler[Sequence] = Scheduler(BlockManager(64, 16), config(8, 32))
    short = _seq("short", 10)
    sched.add(short)
    _run(sched)
    assert short.num_output_tokens == 1
    long = _seq("long", 100, start=1000)
    sched.add(long)
    chunks = []
    while long.num_output_tokens == 0:
        batch = _run(sched)
        assert batch.decodes == [short]  # the decode is never starved by the long prefill
        assert batch.num_tokens <= 32
        chunks.append(batch.prefills[0][1])
    assert chunks == [31, 31, 31, 7]
    assert short.num_output_tokens == 5


def test_chunked_prefill_then_a_newcomer_joins_the_decodes() -> None:
    sched: Scheduler[Sequence] = Scheduler(BlockManager(64, 16), config(8, 32))
    long = _seq("long", 80)
    sched.add(long)
    assert sched.num_pending_prefill_tokens == 80
    chunks = []
    while not long.num_output_tokens:
        batch = _run(sched)
        assert not batch.decodes
        chunks.append([(s.request_id, n) for s, n in batch.prefills])
        if not long.num_output_tokens:
            assert batch.sampled == []
            assert sched.num_pending_prefill_tokens == 80 - long.num_computed_tokens
    assert chunks == [[("long", 32)], [("long", 32)], [("long", 16)]]
    assert sched.num_pending_prefill_tokens == 0
    # A newcomer joins the running batch: decode (1 token) + its prefill in one step.
    short = _seq("short", 20, start=500)
    sched.add(short)
    batch = _run(sched)
    assert batch.decodes == [long] and [(s.request_id, n) for s, n in batch.prefills] == [
        ("short", 20)
    ]
    assert (batch.num_prefill_tokens, batch.num_tokens, batch.sampled) == (20, 21, [long, short])
    assert short.num_output_tokens == 1 and long.num_output_tokens == 2


def test_max_num_seqs_limits_the_batch() -> None:
    sched: Scheduler[Sequence] = Scheduler(BlockManager(64, 16), config(2, 512))
    for i in range(3):
        sched.add(_seq(f"r{i}", 5, start=100 * i))
    batch = sched.schedule()
    assert len(batch.prefills) == 2 and len(sched.waiting) == 1


def test_watermark_holds_admission_back_while_others_run() -> None:
    bm = BlockManager(20, 4)
    sched: Scheduler[Sequence] = Scheduler(bm, config(8, 512, watermark=0.25))
    a, b = _seq("a", 40), _seq("b", 24, start=100)  # 10 blocks, then 6 of the 10 left
    sched.add(a)
    sched.add(b)
    _run(sched)
    assert sched.running == [a] and list(sched.waiting) == [b]  # 6 > 10 - 5 kept back
    sched.finish(a, "abort")
    _run(sched)
    assert sched.running == [b]  # alone, it may use every block


def test_out_of_blocks_preempts_the_newest_and_requeues_it() -> None:
    bm = BlockManager(4, 4)
    sched: Scheduler[Sequence] = Scheduler(bm, config(8, 64))
    a, b = _seq("a", 8), _seq("b", 8, start=50)
    sched.add(a)
    sched.add(b)
    _run(sched)  # both prefilled: 2 blocks each, pool full
    assert bm.num_available_blocks == 0
    batch = _run(sched)  # a needs a third block for its 9th token: b is preempted
    assert batch.decodes == [a]
    assert sched.num_preemptions == 1 and b.num_preemptions == 1
    assert b.status is SequenceStatus.WAITING and sched.waiting[0] is b
    assert b.table is None and b.num_computed_tokens == 0
    assert a.num_output_tokens == 2
    sched.finish(a, "abort")
    _run(sched)  # b comes back and recomputes prompt + its output so far
    assert b.status is SequenceStatus.RUNNING and b.num_output_tokens == 2
    # Its first block came back from the prefix cache; usage keeps the first admission's hit.
    assert bm.num_prompt_tokens_cached == 4 and b.num_cached_tokens == 0


def test_the_victim_is_the_newest_sequence_not_yet_scheduled() -> None:
    bm = BlockManager(6, 4)
    sched: Scheduler[Sequence] = Scheduler(bm, config(8, 64))
    a, b, c = _seq("a", 8), _seq("b", 8, start=50), _seq("c", 8, start=100)
    for seq in (a, b, c):
        sched.add(seq)
    _run(sched)  # 2 blocks each, pool full
    batch = _run(sched)  # a's third block comes from c, then b's from c's freed blocks
    assert batch.decodes == [a, b] and list(sched.waiting) == [c]
    assert (a.num_output_tokens, b.num_output_tokens, c.num_output_tokens) == (2, 2, 1)


def test_abort_frees_blocks_wherever_the_sequence_is() -> None:
    bm = BlockManager(16, 4)
    sched: Scheduler[Sequence] = Scheduler(bm, config(8, 64))
    a, b = _seq("a", 10), _seq("b", 10, start=100)
    sched.add(a)
    _run(sched)
    sched.add(b)
    assert bm.num_active_blocks == 3
    sched.finish(a, "abort")
    sched.finish(b, "abort")
    assert (a.finish_reason, b.finish_reason) == ("abort", "abort")
    assert bm.num_active_blocks == 0 and not sched.has_work
    sched.finish(a, "error")  # already finished: nothing changes
    assert a.finish_reason == "abort"


def test_a_sequence_aborted_while_its_step_ran_is_left_alone() -> None:
    bm = BlockManager(16, 4)
    sched: Scheduler[Sequence] = Scheduler(bm, config(8, 64))
    a, b = _seq("a", 10), _seq("b", 10, start=100)
    sched.add(a)
    sched.add(b)
    batch = sched.schedule()
    sched.finish(a, "abort")
    sched.postprocess(batch, [7, 8])
    assert a.token_ids == list(range(10)) and a.num_computed_tokens == 0
    assert b.token_ids[-1] == 8 and sched.running == [b]
    assert bm.num_active_blocks == 3


def test_stop_tokens_eos_and_length_finish_and_free() -> None:
    bm = BlockManager(64, 4)
    sched: Scheduler[Sequence] = Scheduler(bm, config(8, 512))
    eos = (2,)
    stop = _seq("stop", 5, params=SamplingConfig(stop_token_ids=(9,)), eos_token_ids=eos)
    eos_seq = _seq("eos", 5, start=10, eos_token_ids=eos)
    ignore = _seq("ignore", 5, start=20, params=SamplingConfig(ignore_eos=True), eos_token_ids=eos)
    short = _seq("max-new", 5, start=30, max_new_tokens=1)
    ctx = _seq("max-len", 5, start=40, max_len=6)
    for seq in (stop, eos_seq, ignore, short, ctx):
        sched.add(seq)
    batch = sched.schedule()
    sched.postprocess(batch, [9, 2, 2, 9, 9])
    assert (stop.finish_reason, eos_seq.finish_reason) == ("stop", "stop")
    assert (short.finish_reason, ctx.finish_reason) == ("length", "length")
    assert ignore.finish_reason is None and sched.running == [ignore]
    assert [s.token_ids[-1] for s in (stop, eos_seq, ignore)] == [9, 2, 2]
    assert bm.num_active_blocks == 2  # only `ignore` holds blocks


def test_usage_counts_migrated_tokens_as_output() -> None:
    seq = _seq("m", 23, num_generated_before=3)
    seq.num_cached_tokens = 16
    seq.append(7)
    usage = seq.usage()
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (20, 4, 16)


def test_computed_blocks_are_published_and_reused() -> None:
    sink = RecordingSink()
    sched: Scheduler[Sequence] = Scheduler(BlockManager(64, 16, sink), config(8, 512))
    first = _seq("first", 40)
    sched.add(first)
    _run(sched)
    stored = [h for kind, ev in sink.events if kind == "stored" for h, _ in ev[1]]  # type: ignore[index]
    assert stored == sequence_hashes(list(range(40)), 16)
    again = _seq("again", 40)
    sched.add(again)
    batch = _run(sched)
    assert (again, 8) in batch.prefills and again.num_cached_tokens == 32
    assert sched.block_manager.prefix_cache_hit_rate == 32 / 80


def test_a_step_that_evicts_ten_blocks_publishes_one_event_and_the_router_agrees() -> None:
    publisher = KvEventPublisher("w")
    bm = BlockManager(10, 4, publisher)
    sched: Scheduler[Sequence] = Scheduler(bm, config(8, 512))
    for i in range(5):  # five 8-token prompts: 10 cached blocks once they end
        sched.add(_seq(f"old{i}", 8, start=100 * (i + 1), max_new_tokens=1))
    _run(sched)
    assert not sched.has_work and bm.num_cached_blocks == 10
    before = publisher.next_event_id
    sched.add(_seq("a", 20, start=1000))  # 5 blocks...
    sched.add(_seq("b", 20, start=2000))  # ...and 5 more: all 10 evicted in one step
    batch = sched.schedule()
    events, _, _ = publisher.events_since(before)
    removed = [e.removed for e in events if e.WhichOneof("data") == "removed"]
    assert len(removed) == 1 and len(removed[0].block_hashes) == 10
    sched.postprocess(batch, [7] * len(batch.sampled))
    index = RadixIndex()
    KvEventFollower(index, lambda _: None).apply_all(publisher.events_since(0)[0])
    assert index.worker_blocks("w") == set(bm.resident_hashes())


def test_a_waiting_prompt_is_hashed_once_however_often_it_is_retried(
    hash_calls: list[int],
) -> None:
    sched: Scheduler[Sequence] = Scheduler(BlockManager(4, 4), config(8, 64))
    a, b = _seq("a", 12), _seq("b", 12, start=50)
    sched.add(a)
    sched.add(b)
    for _ in range(3):
        _run(sched)  # a holds 4 blocks: b waits
    assert b.status is SequenceStatus.WAITING
    assert hash_calls == [12, 12]  # a at admission; b at its first try, not at each retry
    sched.finish(a, "abort")
    _run(sched)  # b admitted and prefilled: its prompt's hashes are reused
    assert b.status is SequenceStatus.RUNNING and hash_calls == [12, 12]


def test_a_waiting_request_reports_only_its_uncached_tokens_as_pending_prefill() -> None:
    """Routers weigh a worker's queued prefill: the prefix it holds costs it no compute."""
    sched: Scheduler[Sequence] = Scheduler(BlockManager(8, 4), config(8, 64))
    doc = _seq("doc", 16)
    sched.add(doc)
    _run(sched)
    sched.finish(doc, "stop")  # its 4 blocks stay cached
    hog = _seq("hog", 14, start=900)
    sched.add(hog)
    _run(sched)
    turn = _seq("turn", 24)  # the document again and 8 new tokens; no room for it yet
    sched.add(turn)
    _run(sched)
    assert turn.status is SequenceStatus.WAITING
    assert sched.num_pending_prefill_tokens == 24 - 16
