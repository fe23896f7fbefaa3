"""Continuous batching: which sequences run in the next engine step, and how many tokens each.

Each step has a token budget (`max_num_batched_tokens`). Running sequences
that decode come first (one token each), then running prefills continue
chunk by chunk, then waiting requests are admitted while blocks, batch slots
and budget last. A long prompt is cut into chunks, so it never stalls the
decodes running beside it. When a decode needs a block and none is free, the
most recently admitted sequence is preempted: its blocks are released (the
hashed ones stay in the prefix cache) and it goes back to the head of the
queue, to be recomputed from its prompt + output so far.

Not thread-safe: only the engine thread calls it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

import torch
from tandem.worker.block_manager import BlockManager, BlockTable
from tandem.worker.engine import FinishReason, SamplingConfig


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass(slots=True, eq=False)
class Sequence:
    """One request inside the engine: its tokens, its KV blocks, its progress."""

    request_id: str
    token_ids: list[int]
    params: SamplingConfig
    max_new_tokens: int
    generator: torch.Generator | None = None
    num_generated_before: int = 0
    num_prompt_tokens: int = 0
    table: BlockTable | None = None
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int = -1  # prompt tokens found in the prefix cache at first admission
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    user: object = field(default=None)  # the engine's delivery handle

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_remaining(self) -> int:
        """Tokens that still need KV before the next token can be sampled."""
        return len(self.token_ids) - self.num_computed_tokens


@dataclass(slots=True)
class ScheduledBatch:
    """The work of one step: decodes (1 token each) and prefill chunks (seq, num_tokens)."""

    decodes: list[Sequence] = field(default_factory=list)
    prefills: list[tuple[Sequence, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(n for _, n in self.prefills)

    def __bool__(self) -> bool:
        return bool(self.decodes or self.prefills)


class Scheduler:
    """Owns the waiting queue and the running batch; allocates blocks through the BlockManager."""

    def __init__(
        self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        # Keep a few blocks back when admitting, so running decodes can grow.
        self._watermark = block_manager.num_blocks // 100

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_pending_prefill_tokens(self) -> int:
        waiting = sum(len(s.token_ids) for s in self.waiting)
        return waiting + sum(s.num_remaining for s in self.running if s.num_remaining > 1)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def abort(self, request_id: str) -> Sequence | None:
        """Drop a request wherever it is; its blocks are freed now."""
        for seq in self.running:
            if seq.request_id == request_id:
                self.running.remove(seq)
                self.finish(seq, "abort")
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                self.finish(seq, "abort")
                return seq
        return None

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Mark finished and free its blocks (call after removing it from running/waiting)."""
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if seq.table is not None:
            self.block_manager.free(seq.table)
            seq.table = None

    def remove_finished(self) -> None:
        self.running = [s for s in self.running if s.status is SequenceStatus.RUNNING]

    # -- scheduling ----------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        scheduled: set[int] = set()
        preempted = False

        for seq in [s for s in self.running if s.num_remaining == 1]:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted by a sequence ahead of it in this loop
            if not self._grow(seq, scheduled):
                preempted = True
                continue
            batch.decodes.append(seq)
            scheduled.add(id(seq))
            budget -= 1

        for seq in self.running:
            if budget == 0:
                break
            if id(seq) in scheduled or seq.status is not SequenceStatus.RUNNING:
                continue
            n = min(seq.num_remaining, budget)
            batch.prefills.append((seq, n))
            scheduled.add(id(seq))
            budget -= n

        while self.waiting and budget > 0 and not preempted:
            if len(self.running) >= self.max_num_seqs:
                break
            seq = self.waiting[0]
            if not self._admit(seq):
                break
            self.waiting.popleft()
            self.running.append(seq)
            n = min(seq.num_remaining, budget)
            batch.prefills.append((seq, n))
            scheduled.add(id(seq))
            budget -= n
        return batch

    def _admit(self, seq: Sequence) -> bool:
        bm = self.block_manager
        num_hit = bm.match_prefix(seq.token_ids)
        need = bm.blocks_for(len(seq.token_ids)) - num_hit
        if need > bm.num_available_blocks - self._watermark and self.running:
            return False
        table = bm.allocate_prompt(seq.token_ids)
        if table is None:
            return False
        seq.table = table
        seq.num_computed_tokens = table.num_cached_tokens
        if seq.num_cached_tokens < 0:
            seq.num_cached_tokens = table.num_cached_tokens
        seq.status = SequenceStatus.RUNNING
        return True

    def _grow(self, seq: Sequence, scheduled: set[int]) -> bool:
        """Blocks for `seq`'s next token, preempting later sequences if needed.

        False when `seq` itself had to be preempted.
        """
        assert seq.table is not None
        while not self.block_manager.ensure_capacity(seq.table, len(seq.token_ids)):
            victim = next(
                (
                    s
                    for s in reversed(self.running)
                    if s is not seq
                    and id(s) not in scheduled
                    and s.status is SequenceStatus.RUNNING
                ),
                seq,
            )
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        assert seq.table is not None
        self.block_manager.free(seq.table)
        seq.table = None
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.running.remove(seq)
        self.waiting.appendleft(seq)
