"""The scheduler with a tiered cache below its block pool: offload, onboard, limits, events.

The copier here is a fake that finishes every op at the next `completed()` (or, for tests of
in-flight states, only when released); the real copiers have their own tests.
"""

from __future__ import annotations

from typing import Any

from tandem.runtime.kv_tiers import DEVICE_TIER, DISK_TIER, HOST_TIER
from tandem.worker.block_manager import BlockManager
from tandem.worker.engine import SamplingConfig
from tandem.worker.kv_event_sink import RecordingSink
from tandem.worker.kvbm.config import KvbmConfig
from tandem.worker.kvbm.copier import CopyKind, CopyOp
from tandem.worker.kvbm.manager import Kvbm
from tandem.worker.kvbm.registry import BlockRegistry, TierPool
from tandem.worker.scheduler import Scheduler
from tandem.worker.scheduler_config import SchedulerConfig
from tandem.worker.sequence import Sequence, SequenceStatus

BS = 4


class FakeCopier:
    """Finishes ops when told (`hold`) or at the next `completed()`; records every op.

    Each finished op reports `seconds[kind]` as its copy time (0 if not set).
    """

    def __init__(self, fail: set[int] | None = None) -> None:
        self.submitted: list[CopyOp] = []
        self.synchronous: list[CopyOp] = []
        self.hold = False
        self.seconds: dict[CopyKind, float] = {}
        self._queued: list[CopyOp] = []
        self._fail = fail or set()

    def submit(self, op: CopyOp) -> None:
        self.submitted.append(op)
        self._queued.append(op)

    def completed(self) -> list[CopyOp]:
        if self.hold:
            return []
        done, self._queued = self._queued, []
        for op in done:
            object.__setattr__(op, "ok", op.block_hash not in self._fail)
            object.__setattr__(op, "seconds", self.seconds.get(op.kind, 0.0))
        return done

    @property
    def has_completed(self) -> bool:
        return bool(self._queued) and not self.hold

    def copy_now(self, op: CopyOp) -> None:
        object.__setattr__(op, "ok", True)
        self.synchronous.append(op)

    def take_stall_seconds(self) -> float:
        return 0.0

    @property
    def pending(self) -> int:
        return len(self._queued)

    def close(self) -> None:
        pass


def tiered(
    num_blocks: int = 8,
    host: int = 32,
    disk: int = 0,
    copier: FakeCopier | None = None,
    **kw: Any,
) -> tuple[Scheduler[Sequence], Kvbm, RecordingSink, FakeCopier]:
    sink = RecordingSink()
    copier = copier or FakeCopier()
    tiers = "hbm,host_dram,nvme_ssd" if disk else "hbm,host_dram"
    config = KvbmConfig(connector="kvbm", kvbm_storage_tiers=tiers, **kw)
    registry = BlockRegistry(TierPool(HOST_TIER, host), TierPool(DISK_TIER, disk) if disk else None)
    kvbm = Kvbm(config, registry, copier, bytes_per_block=100, sink=sink)
    bm = BlockManager(num_blocks, BS, sink)
    bm.attach_tiers(kvbm)
    sched: Scheduler[Sequence] = Scheduler(
        bm,
        SchedulerConfig(
            kv_cache_block_size=BS, max_num_seqs=8, max_num_batched_tokens=64, watermark=0.0
        ),
    )
    return sched, kvbm, sink, copier


def seq(rid: str, tokens: list[int], max_new_tokens: int = 1) -> Sequence:
    return Sequence(
        request_id=rid,
        token_ids=list(tokens),
        params=SamplingConfig(),
        max_new_tokens=max_new_tokens,
        max_len=10_000,
    )


def run_to_end(sched: Scheduler[Sequence], *seqs: Sequence) -> None:
    for s in seqs:
        sched.add(s)
    for _ in range(100):
        if all(s.is_finished for s in seqs):
            return
        batch = sched.schedule()
        sched.postprocess(batch, [7] * len(batch.sampled))
    raise AssertionError("sequences did not finish")


def settle(sched: Scheduler[Sequence]) -> None:
    """Steps with nothing to run, so every copy due is started and finished."""
    for _ in range(20):
        sched.schedule()


def tier_events(sink: RecordingSink, kind: str, tier: str) -> list[Any]:
    """The data of `sink`'s `kind` events in `tier`."""
    return [data for k, t, data in sink.tier_events if k == kind and t == tier]


CONVERSATION = list(range(100, 121))  # 21 tokens: 5 full blocks
OTHERS = [list(range(1000 * i, 1000 * i + 16)) for i in range(1, 4)]  # 4 blocks each


def write_down_then_evict_conversation(sched: Scheduler[Sequence]) -> None:
    """Runs CONVERSATION, lets its blocks be copied down, then pushes them off the device."""
    run_to_end(sched, seq("a", CONVERSATION))
    settle(sched)
    for i, other in enumerate(OTHERS):
        run_to_end(sched, seq(f"o{i}", other))
    settle(sched)


def test_evicted_prefix_comes_back_from_host_memory_not_recomputed() -> None:
    sched, kvbm, sink, copier = tiered()
    first = seq("a", CONVERSATION)
    run_to_end(sched, first)
    settle(sched)
    assert first.usage().cached_tokens == 0
    # Written through: each full block went down as soon as it was full.
    settle(sched)
    assert {op.kind for op in copier.submitted} == {CopyKind.DEVICE_TO_HOST}
    assert len(kvbm.registry.host) == 5
    assert len(tier_events(sink, "stored", HOST_TIER)) == 5
    for i, other in enumerate(OTHERS):  # push every block of the conversation off the device
        run_to_end(sched, seq(f"o{i}", other))
    settle(sched)
    assert sched.block_manager.match_prefix(CONVERSATION) == 0

    back = seq("a2", CONVERSATION + [7, 55, 56])
    sched.add(back)
    sched.schedule()
    assert back.status is SequenceStatus.ONBOARDING
    onboards = [op for op in copier.submitted if op.kind is CopyKind.HOST_TO_DEVICE]
    # Five full blocks, all before the last token's block: all five come back.
    assert len(onboards) == 5
    run_to_end(sched, back)
    assert back.usage().cached_tokens == 20  # read back, not recomputed
    stats = kvbm.stats()
    assert stats.onboarded_blocks == {HOST_TIER: 5}
    assert stats.hit_blocks[HOST_TIER] == 5
    # Back on the device and announced there again.
    assert sched.block_manager.match_prefix(CONVERSATION) == 5


def test_offload_ratio_one_writes_only_what_the_pool_evicts_and_in_the_step() -> None:
    sched, kvbm, sink, copier = tiered(kvbm_offload_ratio=1.0)
    run_to_end(sched, seq("a", CONVERSATION))
    settle(sched)
    assert copier.submitted == [] and len(kvbm.registry.host) == 0
    run_to_end(sched, seq("o0", OTHERS[0]), seq("o1", OTHERS[1]))
    # The pool evicted the conversation's blocks: each was copied down right then.
    assert copier.synchronous and all(
        op.kind is CopyKind.DEVICE_TO_HOST for op in copier.synchronous
    )
    assert len(kvbm.registry.host) == len(copier.synchronous)


def test_blocks_being_copied_down_stay_pinned_on_the_device() -> None:
    copier = FakeCopier()
    copier.hold = True
    sched, kvbm, _, _ = tiered(copier=copier)
    run_to_end(sched, seq("a", CONVERSATION))
    sched.schedule()  # starts the copies down (at most 1/8 of the pool at once: 1)
    bm = sched.block_manager
    in_flight = [op.device_block for op in copier.submitted]
    assert in_flight and bm.num_available_blocks == bm.num_blocks - len(in_flight)
    copier.hold = False
    settle(sched)
    assert not kvbm.busy and len(kvbm.registry.host) == 5
    assert bm.num_available_blocks == bm.num_blocks


def test_request_aborted_while_onboarding_frees_its_blocks_only_after_the_copies() -> None:
    sched, kvbm, _, copier = tiered()
    write_down_then_evict_conversation(sched)
    copier.hold = True
    back = seq("a2", CONVERSATION + [7])
    sched.add(back)
    sched.schedule()
    assert back.status is SequenceStatus.ONBOARDING
    bm = sched.block_manager
    sched.finish(back, "abort")
    assert back.is_finished and back.table is not None  # copies still write into its blocks
    held = bm.num_blocks - bm.num_available_blocks
    assert held >= 5
    copier.hold = False
    sched.schedule()
    assert back.table is None and not sched.onboarding
    assert bm.num_available_blocks == bm.num_blocks


def test_a_block_that_fails_to_come_back_is_recomputed_from_there() -> None:
    sched, kvbm, _, copier = tiered()
    write_down_then_evict_conversation(sched)
    third = sched.block_manager.prompt_hashes(CONVERSATION).sequence[2]
    copier._fail = {third}
    back = seq("a2", CONVERSATION + [7])
    run_to_end(sched, back)
    assert back.usage().cached_tokens == 2 * BS  # blocks 0 and 1 came back, 2.. recomputed
    assert third not in kvbm.registry.host  # dropped, never read again


def test_host_tier_stays_within_capacity_and_reports_what_it_evicts() -> None:
    sched, kvbm, sink, _ = tiered(host=6)
    for i in range(10):
        run_to_end(sched, seq(f"s{i}", list(range(10_000 * (i + 1), 10_000 * (i + 1) + 16))))
        settle(sched)
        assert len(kvbm.registry.host) <= 6
    stored = sum(len(blocks) for _, blocks in tier_events(sink, "stored", HOST_TIER))
    removed = sum(len(hashes) for hashes in tier_events(sink, "removed", HOST_TIER))
    assert stored - removed == len(kvbm.registry.host) == 6


def test_disk_write_through_and_frequency_filter() -> None:
    sched, kvbm, sink, copier = tiered(disk=32)
    run_to_end(sched, seq("a", CONVERSATION))
    settle(sched)
    assert len(kvbm.registry.disk) == 5  # every block that reached host memory went on to disk
    assert len(tier_events(sink, "stored", DISK_TIER)) == 5

    sched, kvbm, sink, copier = tiered(disk=32, kvbm_disk_min_uses=1)
    run_to_end(sched, seq("a", CONVERSATION))
    settle(sched)
    assert len(kvbm.registry.disk) == 0  # not reused yet: stays in host memory only
    for i, other in enumerate(OTHERS):
        run_to_end(sched, seq(f"o{i}", other))
    run_to_end(sched, seq("a2", CONVERSATION + [7]))
    settle(sched)
    assert len(kvbm.registry.disk) == 5  # reused once: now worth a disk write


def test_device_tier_events_unchanged_by_the_tiers() -> None:
    sched, _, sink, _ = tiered()
    run_to_end(sched, seq("a", CONVERSATION))
    device_stored = tier_events(sink, "stored", DEVICE_TIER)
    assert sum(len(blocks) for _, blocks in device_stored) == 5
    assert sink.events == [("stored", data) for data in device_stored]


def test_other_sequences_keep_stepping_while_one_onboards() -> None:
    sched, _, _, copier = tiered(num_blocks=16)
    write_down_then_evict_conversation(sched)
    decoding = seq("decoding", list(range(5000, 5008)), max_new_tokens=50)
    sched.add(decoding)
    sched.postprocess(b := sched.schedule(), [7] * len(b.sampled))
    copier.hold = True
    back = seq("back", CONVERSATION + [7])
    sched.add(back)
    for _ in range(5):  # the copies up are still in flight: the decode goes on regardless
        batch = sched.schedule()
        assert batch.decodes == [decoding] and back.status is SequenceStatus.ONBOARDING
        sched.postprocess(batch, [7] * len(batch.sampled))
    copier.hold = False
    batch = sched.schedule()
    assert back.status is SequenceStatus.RUNNING and batch.prefills[0][0] is back


# -- cost-aware onboarding -------------------------------------------------------------------

RECOMPUTE_BLOCK = 20e-6 * BS  # what the steps below measure: 20 us a token


def measure_prefill(kvbm: Kvbm) -> None:
    """The engine's prefill steps, as it reports them: 10 ms a step + 20 us a token."""
    for n in [8, 40, 16, 64, 24] * 4:
        kvbm.prefilled(n, 0.010 + 20e-6 * n)


def evict_again(sched: Scheduler[Sequence], round_: int) -> None:
    """Pushes every block off the device with sequences not seen before."""
    for i in range(3):
        base = 100_000 * round_ + 1000 * i
        run_to_end(sched, seq(f"r{round_}.{i}", list(range(base, base + 16))))
    settle(sched)


def disk_only_conversation(copier: FakeCopier) -> tuple[Scheduler[Sequence], Kvbm]:
    # Host memory holds 2 blocks: the conversation's 5 are on disk only once others came by.
    sched, kvbm, _, _ = tiered(host=2, disk=64, copier=copier)
    write_down_then_evict_conversation(sched)
    hashes = sched.block_manager.prompt_hashes(CONVERSATION).sequence
    assert all(kvbm.registry.find(h) is kvbm.registry.disk for h in hashes)
    return sched, kvbm


def test_a_tier_measured_slower_than_recomputing_is_declined_and_recomputed() -> None:
    copier = FakeCopier()
    copier.seconds[CopyKind.DISK_TO_DEVICE] = 5 * RECOMPUTE_BLOCK
    sched, kvbm = disk_only_conversation(copier)
    measure_prefill(kvbm)
    # Not measured yet: the disk is trusted, and this read is its first measurement.
    back = seq("a2", CONVERSATION + [7])
    run_to_end(sched, back)
    assert back.usage().cached_tokens == 5 * BS
    assert kvbm.stats().onboarded_blocks == {DISK_TIER: 5}
    assert kvbm.cost is not None and not kvbm.cost.worth_onboarding(DISK_TIER)

    evict_again(sched, 1)
    reads_before = sum(op.kind is CopyKind.DISK_TO_DEVICE for op in copier.submitted)
    again = seq("a3", CONVERSATION + [8])
    run_to_end(sched, again)
    # Declined: nothing read, the whole prompt prefilled here.
    assert again.usage().cached_tokens == 0
    assert sum(op.kind is CopyKind.DISK_TO_DEVICE for op in copier.submitted) == reads_before
    stats = kvbm.stats()
    assert stats.declined_blocks == {DISK_TIER: 5}
    assert stats.onboarded_blocks == {DISK_TIER: 5}
    assert all(
        h in kvbm.registry.disk for h in sched.block_manager.prompt_hashes(CONVERSATION).sequence
    )


def test_a_tier_measured_faster_than_recomputing_is_onboarded() -> None:
    copier = FakeCopier()
    copier.seconds[CopyKind.DISK_TO_DEVICE] = RECOMPUTE_BLOCK / 2
    sched, kvbm = disk_only_conversation(copier)
    measure_prefill(kvbm)
    for round_, rid in enumerate(["a2", "a3"], start=1):
        back = seq(rid, CONVERSATION + [round_])
        run_to_end(sched, back)
        assert back.usage().cached_tokens == 5 * BS
        evict_again(sched, round_)
    stats = kvbm.stats()
    assert stats.onboarded_blocks == {DISK_TIER: 10} and stats.declined_blocks == {}


def test_onboarding_stops_at_the_first_block_of_a_declined_tier() -> None:
    sched, kvbm, _, _ = tiered(host=8, disk=8)
    assert kvbm.cost is not None
    measure_prefill(kvbm)
    kvbm.cost.copied(HOST_TIER, RECOMPUTE_BLOCK / 4)
    kvbm.cost.copied(DISK_TIER, 4 * RECOMPUTE_BLOCK)
    host, disk = kvbm.registry.host, kvbm.registry.disk
    assert host is not None and disk is not None
    where = [host, host, disk, host, disk]  # a run the lower tiers could bring back whole
    for h, pool in enumerate(where):
        assert pool.reserve(h, h, h - 1 if h else None) is not None
        pool.commit(h)
    assert len(kvbm.registry.lookup_run(list(range(5)), 0, 5)) == 5
    # The two host blocks come up; from the first disk block on, the prompt is recomputed.
    assert kvbm.lookup(list(range(5)), 0, 5) == 2
    assert kvbm.stats().declined_blocks == {DISK_TIER: 3}
    # A disk as fast as host memory: the whole run.
    kvbm.cost.copied(DISK_TIER, 0.0)
    for _ in range(100):
        kvbm.cost.copied(DISK_TIER, RECOMPUTE_BLOCK / 4)
    assert kvbm.lookup(list(range(5)), 0, 5) == 5
