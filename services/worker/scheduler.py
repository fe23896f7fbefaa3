"""Continuous batching: which sequences run in the next engine step, and how many tokens each.

Shared by the torch engine and the mocker, so the mocker batches, chunks and
preempts exactly like the real engine.

Each step has a token budget (`max_num_batched_tokens`). Running sequences
that decode come first (one token each), then running prefills continue
chunk by chunk, then waiting requests are admitted in arrival order while
batch slots (`max_num_seqs`), blocks (above a watermark kept for growing
decodes) and budget last. A long prompt is cut into chunks, so it never stalls
the decodes running beside it. When a decode needs a block and none is free,
the most recently admitted sequence is preempted: its blocks are released
(the hashed ones stay in the prefix cache) and it goes back to the head of
the queue, to be recomputed from its prompt + output so far. Nothing is
admitted in a step that preempted.

One step is `schedule()`, the engine computes (or simulates) the batch and
picks one token per `batch.sampled`, then `postprocess()`.

Disaggregated serving adds two states outside the step. A decode worker
`park()`s a request whose prompt another worker prefills: all its blocks are
allocated at once (cached prefix matched), and it is not scheduled until
`resume_remote()` (its KV arrived: those blocks are marked computed and the
first token appended) or `resume_local()` (prefill it here after all). A
prefill worker's sequence has `pin_blocks`: when it finishes, its blocks stay
held (`pinned`) until `release()`, once the transfer has read them.

A tiered cache (`BlockManager.tiers`, kvbm/manager.py) adds one more: a request
whose prompt continues, past the device's cached prefix, with blocks held in host memory
or on disk is admitted `ONBOARDING`: all its blocks are allocated, those blocks are copied
up off the step, and it joins the running batch once they are back (prefilling from the
first block that did not come back). Each step starts by running the copies that finished.

Not thread-safe: only the engine's step loop calls it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .block_manager import BlockManager
from .engine import EngineStats, FinishReason
from .kv_event_sink import KvEventSink
from .scheduler_config import SchedulerConfig
from .sequence import Sequence, SequenceStatus

S = TypeVar("S", bound=Sequence)


@dataclass(slots=True)
class ScheduledBatch(Generic[S]):
    """The work of one step: decodes (1 token each) and prefill chunks (seq, num_tokens)."""

    decodes: list[S] = field(default_factory=list)
    prefills: list[tuple[S, int]] = field(default_factory=list)
    # Sequences whose last token is computed this step, so they get a new one:
    # every decode, then each prefill that reaches its end, in that order.
    sampled: list[S] = field(default_factory=list)
    # The prefill chunks' tokens, summed as the scheduler adds them (read several times a
    # step, by the engine's step timing and its stats).
    num_prefill_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + self.num_prefill_tokens

    def __bool__(self) -> bool:
        return bool(self.decodes or self.prefills)


class Scheduler(Generic[S]):
    """Owns the waiting queue and the running batch; allocates blocks through the BlockManager."""

    def __init__(self, block_manager: BlockManager, config: SchedulerConfig) -> None:
        self.block_manager = block_manager
        self.config = config
        self.waiting: deque[S] = deque()
        self.running: list[S] = []
        self.parked: set[S] = set()  # awaiting KV from a prefill worker
        self.pinned: set[S] = set()  # finished prefill-only, blocks held for the transfer
        self.onboarding: set[S] = set()  # cached prefix being copied up from a lower tier
        self.num_preemptions = 0
        # Set when a step found nothing to do only because copies are in flight.
        self._waiting_on_copies = False
        # Blocks kept free when admitting, so running decodes can grow.
        self._watermark_blocks = int(config.watermark * block_manager.num_blocks)

    @classmethod
    def with_blocks(
        cls, config: SchedulerConfig, num_blocks: int, sink: KvEventSink | None = None
    ) -> Scheduler[S]:
        """A scheduler over a new pool of `num_blocks` KV blocks paged as `config` says."""
        block_manager = BlockManager(
            num_blocks,
            config.kv_cache_block_size,
            sink,
            enable_prefix_caching=config.enable_prefix_caching,
        )
        return cls(block_manager, config)

    @property
    def has_work(self) -> bool:
        """A step would make progress now (the engine's loop sleeps otherwise; a tiered
        cache's copier wakes it when a copy finishes)."""
        tiers = self.block_manager.tiers
        if tiers is not None and tiers.has_completed:
            return True
        return bool(self.running or (self.waiting and not self._waiting_on_copies))

    @property
    def waiting_on_copies(self) -> bool:
        """Blocks are held by copies in flight: a request that does not fit now may later."""
        tiers = self.block_manager.tiers
        return bool(self.onboarding) or (tiers is not None and tiers.busy)

    @property
    def num_pending_prefill_tokens(self) -> int:
        # A waiting request's cached prefix will not be computed (routers count only the
        # uncached part of what they send, too): as found at its last admission attempt.
        waiting = sum(len(s.token_ids) - s.num_found_cached_tokens for s in self.waiting)
        return waiting + sum(s.num_remaining for s in self.running if s.num_remaining > 1)

    def stats(
        self, prefill_step_seconds_avg: float = 0.0, decode_step_seconds_avg: float = 0.0
    ) -> EngineStats:
        """The engine's load as the scheduler and its block pool see it (step times: the engine's)."""
        bm = self.block_manager
        return EngineStats(
            total_blocks=bm.num_blocks,
            active_blocks=bm.num_active_blocks,
            cached_blocks=bm.num_cached_blocks,
            num_running=len(self.running) + len(self.parked) + len(self.onboarding),
            num_waiting=len(self.waiting),
            pending_prefill_tokens=self.num_pending_prefill_tokens,
            prefix_cache_hit_rate=bm.prefix_cache_hit_rate,
            num_preemptions=self.num_preemptions,
            prefill_step_seconds_avg=prefill_step_seconds_avg,
            decode_step_seconds_avg=decode_step_seconds_avg,
        )

    def add(self, seq: S) -> None:
        self.waiting.append(seq)

    def finish(self, seq: S, reason: FinishReason) -> None:
        """End `seq` wherever it is and free its blocks now; no-op if it already ended."""
        if seq.status is SequenceStatus.FINISHED:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.PARKED:
            self.parked.discard(seq)
        elif seq.status is SequenceStatus.ONBOARDING:
            # Copies are writing into its blocks: they are freed once those finish.
            seq.status = SequenceStatus.FINISHED
            seq.finish_reason = reason
            return
        elif seq in self.waiting:  # not there when it never was added
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq.table is not None:
            if seq.pin_blocks and reason != "abort":
                self.pinned.add(seq)
            else:
                self.block_manager.free(seq.table)
                seq.table = None

    # -- disaggregated serving --------------------------------------------------

    def park(self, seq: S) -> bool:
        """Allocate all of `seq`'s blocks and hold it unscheduled; False (unchanged) if they
        do not fit now (the caller prefills it locally instead)."""
        if not self._allocate(seq):
            return False
        seq.status = SequenceStatus.PARKED
        self.parked.add(seq)
        return True

    def resume_remote(self, seq: S, first_token: int) -> bool:
        """`seq`'s prompt KV landed in its blocks: mark them computed, append the first token
        and decode on. False when `seq` is not parked (it ended meanwhile)."""
        if seq not in self.parked:
            return False
        self.parked.discard(seq)
        assert seq.table is not None
        seq.num_computed_tokens = len(seq.token_ids)
        self.block_manager.mark_computed(seq.table, seq.token_ids, seq.num_computed_tokens)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        reason = seq.append(first_token)
        if reason is not None:
            self.finish(seq, reason)
        return True

    def resume_local(self, seq: S) -> bool:
        """Prefill parked `seq` here after all (chunked, like any running prefill)."""
        if seq not in self.parked:
            return False
        self.parked.discard(seq)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        return True

    def release(self, seq: S) -> None:
        """Unpin a finished prefill-only sequence's blocks (hashed ones stay cached)."""
        if seq in self.pinned:
            self.pinned.discard(seq)
            if seq.table is not None:
                self.block_manager.free(seq.table)
                seq.table = None

    # -- one step --------------------------------------------------------------

    def schedule(self) -> ScheduledBatch[S]:
        """The next step's batch. The blocks it evicts are reported as one removal."""
        with self.block_manager.coalesced_removals():
            tiers = self.block_manager.tiers
            if tiers is not None:
                self._waiting_on_copies = False
                tiers.poll()
            batch = self._schedule()
            if not batch and self.waiting and self.waiting_on_copies:
                self._waiting_on_copies = True
            return batch

    def _schedule(self) -> ScheduledBatch[S]:
        batch: ScheduledBatch[S] = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        scheduled: set[S] = set()
        preempted = False

        # Runs for every decode of every step: plain attribute reads, no property calls.
        running = SequenceStatus.RUNNING
        block_size = self.block_manager.block_size
        for seq in [s for s in self.running if len(s.token_ids) - s.num_computed_tokens == 1]:
            if budget == 0:
                break
            if seq.status is not running:
                continue  # preempted by a sequence ahead of it in this loop
            table = seq.table
            assert table is not None
            # A new block only when its next token starts one (most steps: none).
            if len(seq.token_ids) > len(table.block_ids) * block_size and not self._grow(
                seq, scheduled
            ):
                preempted = True
                continue
            batch.decodes.append(seq)
            batch.sampled.append(seq)
            scheduled.add(seq)
            budget -= 1

        for seq in self.running:
            if budget == 0:
                break
            if seq in scheduled or seq.status is not running:
                continue
            budget -= self._add_prefill(batch, seq, budget)

        while self.waiting and budget > 0 and not preempted:
            if len(self.running) + len(self.onboarding) >= self.config.max_num_seqs:
                break
            seq = self.waiting[0]
            if not self._admit(seq):
                break
            self.waiting.popleft()
            if seq.status is SequenceStatus.ONBOARDING:
                continue
            self.running.append(seq)
            budget -= self._add_prefill(batch, seq, budget)
        return batch

    def postprocess(self, batch: ScheduledBatch[S], tokens: list[int]) -> None:
        """Apply a step that ran: advance each sequence's KV, publish the blocks that filled
        up, append `tokens` (one per `batch.sampled`), finish the sequences that stop.

        Sequences finished while the step ran (aborted) are skipped.
        """
        # Runs once per step over the whole batch: plain loops and `is` checks, no properties.
        mark_computed = self.block_manager.mark_computed
        block_size = self.block_manager.block_size
        running = SequenceStatus.RUNNING
        for seq in batch.decodes:
            if seq.status is running:
                table = seq.table
                assert table is not None
                num_computed = seq.num_computed_tokens = seq.num_computed_tokens + 1
                if num_computed // block_size > len(table.hashes):  # a block filled up
                    mark_computed(table, seq.token_ids, num_computed)
        for seq, n in batch.prefills:
            if seq.status is running:
                assert seq.table is not None
                seq.num_computed_tokens += n
                mark_computed(seq.table, seq.token_ids, seq.num_computed_tokens)
        for seq, token in zip(batch.sampled, tokens, strict=True):
            if seq.status is running:
                reason = seq.append(token)
                if reason is not None:
                    self.finish(seq, reason)

    # -- internals -------------------------------------------------------------

    def _add_prefill(self, batch: ScheduledBatch[S], seq: S, budget: int) -> int:
        n = min(seq.num_remaining, budget)
        batch.prefills.append((seq, n))
        batch.num_prefill_tokens += n
        if n == seq.num_remaining:
            batch.sampled.append(seq)
        return n

    def _admit(self, seq: S) -> bool:
        first_admission = seq.num_cached_tokens < 0
        if not self._allocate(seq):
            return False
        seq.status = SequenceStatus.RUNNING
        if self.block_manager.tiers is not None:
            self._start_onboarding(seq, first_admission)
        return True

    def _start_onboarding(self, seq: S, first_admission: bool) -> None:
        """Copy up the blocks after `seq`'s device-cached prefix that a lower tier holds."""
        bm = self.block_manager
        tiers = bm.tiers
        table = seq.table
        assert tiers is not None and table is not None
        bs = bm.block_size
        hashes = table.prompt_hashes.sequence
        start = table.num_cached_tokens // bs
        # As for device hits: the block of the last prompt token is always computed here.
        reusable = (len(seq.token_ids) - 1) // bs
        count = tiers.lookup(hashes, start, reusable - start)
        tiers.count_admission(len(hashes), start)
        if not count:
            return

        def done(num_back: int) -> None:
            self.onboarding.discard(seq)
            if seq.status is SequenceStatus.FINISHED:  # ended while its blocks were copied
                if seq.table is not None:
                    bm.free(seq.table)
                    seq.table = None
                return
            assert seq.table is not None
            seq.num_computed_tokens = (start + num_back) * bs
            bm.mark_computed(seq.table, seq.token_ids, seq.num_computed_tokens)
            if first_admission:
                seq.num_cached_tokens = seq.num_computed_tokens
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)

        if tiers.onboard(hashes, start, count, table.block_ids, done):
            seq.status = SequenceStatus.ONBOARDING
            self.onboarding.add(seq)

    def _allocate(self, seq: S) -> bool:
        """`seq`'s block table for its whole prompt (cached prefix reused), or False."""
        bm = self.block_manager
        hashes = seq.prompt_hashes
        # Hashed once while it waits: its tokens change only by a preemption's output.
        if hashes is None or seq.num_hashed_tokens != len(seq.token_ids):
            hashes = seq.prompt_hashes = bm.prompt_hashes(seq.token_ids)
            seq.num_hashed_tokens = len(seq.token_ids)
        found = bm.match_prefix(seq.token_ids, hashes)
        seq.num_found_cached_tokens = min(found * bm.block_size, len(seq.token_ids))
        need = bm.blocks_for(len(seq.token_ids)) - found
        if need > bm.num_available_blocks - self._watermark_blocks and self.running:
            return False
        table = bm.allocate_prompt(seq.token_ids, hashes=hashes)
        if table is None:
            return False
        seq.prompt_hashes = None  # the table keeps them now
        seq.table = table
        seq.num_computed_tokens = table.num_cached_tokens
        if seq.num_cached_tokens < 0:
            seq.num_cached_tokens = table.num_cached_tokens
        return True

    def _grow(self, seq: S, scheduled: set[S]) -> bool:
        """Blocks for `seq`'s next token, preempting later sequences if needed.

        False when `seq` itself had to be preempted.
        """
        assert seq.table is not None
        while not self.block_manager.ensure_capacity(seq.table, len(seq.token_ids)):
            victim = next(
                (
                    s
                    for s in reversed(self.running)
                    if s is not seq and s not in scheduled and s.is_running
                ),
                seq,
            )
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: S) -> None:
        assert seq.table is not None
        self.block_manager.free(seq.table)
        seq.table = None
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)
