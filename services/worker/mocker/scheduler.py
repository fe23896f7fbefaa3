"""Continuous batching for the mocker: admit, chunk prefills, decode, preempt.

Synchronous and clock-free, so tests drive it step by step; the engine wraps
it in an asyncio loop that sleeps the simulated step time between
`schedule()` and `complete()`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..block_manager import BlockManager
from ..engine import FinishReason
from .config import MockerConfig
from .sequence import MockSequence


@dataclass(slots=True)
class StepPlan:
    """What one step computes: (sequence, number of tokens) pairs and its cost inputs."""

    scheduled: list[tuple[MockSequence, int]] = field(default_factory=list)
    num_prefill_tokens: int = 0
    num_decode_seqs: int = 0
    num_decode_context_tokens: int = 0


class Scheduler:
    """Owns the waiting queue, the running batch and the BlockManager they draw on.

    Policy (vLLM-like): running sequences first, oldest first, each taking what
    it needs from the step's token budget (1 for decode, a chunk for prefill);
    when a running sequence cannot grow, the newest running sequence is
    preempted (blocks freed, requeued at the front, recomputed later: hashed
    blocks usually come back from the prefix cache). Waiting sequences are
    admitted in arrival order while the budget, `max_num_seqs` and the free
    blocks (above the watermark) allow, and never in a step that preempted.
    """

    def __init__(self, config: MockerConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.waiting: deque[MockSequence] = deque()
        self.running: list[MockSequence] = []
        self.num_preemptions = 0
        self._watermark_blocks = int(config.watermark * blocks.num_blocks)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: MockSequence) -> None:
        self.waiting.append(seq)

    def abort(self, seq: MockSequence) -> None:
        """Drop `seq` wherever it is and free its blocks at once."""
        if seq.finish_reason is not None:
            return
        if seq.table is None:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        else:
            self.running.remove(seq)
        self._finish(seq, "abort")

    def abort_all(self) -> None:
        for seq in [*self.running, *self.waiting]:
            self.abort(seq)

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self.config.max_num_batched_tokens
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(len(seq.token_ids) - seq.num_computed, budget)
            assert seq.table is not None
            while not self.blocks.ensure_capacity(seq.table, seq.num_computed + n):
                preempted = True
                victim = self.running.pop()
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                self._add_to_plan(plan, seq, n)
                budget -= n
                i += 1
        if preempted:
            return plan
        bs = self.blocks.block_size
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if self.running:
                needed = -(-len(seq.token_ids) // bs)
                if self.blocks.num_available_blocks - needed < self._watermark_blocks:
                    break
            table = self.blocks.allocate_prompt(seq.token_ids)
            if table is None:
                break
            self.waiting.popleft()
            seq.table = table
            seq.num_computed = table.num_cached_tokens
            seq.prefill_end = len(seq.token_ids)
            if seq.num_cached_tokens < 0:
                seq.num_cached_tokens = table.num_cached_tokens
            self.running.append(seq)
            n = min(len(seq.token_ids) - seq.num_computed, budget)
            self._add_to_plan(plan, seq, n)
            budget -= n
        return plan

    def complete(self, plan: StepPlan) -> None:
        """Apply a finished step: advance progress, emit tokens, retire finished sequences."""
        any_finished = False
        bs = self.blocks.block_size
        for seq, n in plan.scheduled:
            table = seq.table
            if seq.finish_reason is not None or table is None:
                continue  # aborted while the step ran
            seq.num_computed += n
            if seq.num_computed >= (len(table.hashes) + 1) * bs:  # a block filled up
                self.blocks.mark_computed(table, seq.token_ids, seq.num_computed)
            if seq.num_computed >= len(seq.token_ids):
                token = seq.sample()
                reason = seq.check_finished(token)
                if reason is not None:
                    self._finish(seq, reason)
                    any_finished = True
                else:
                    seq.event.set()
        if any_finished:
            self.running = [s for s in self.running if s.finish_reason is None]

    def pending_prefill_tokens(self) -> int:
        waiting = sum(len(s.token_ids) for s in self.waiting)
        return waiting + sum(
            s.prefill_end - s.num_computed for s in self.running if s.is_prefilling
        )

    # -- internals -------------------------------------------------------------

    def _add_to_plan(self, plan: StepPlan, seq: MockSequence, n: int) -> None:
        plan.scheduled.append((seq, n))
        if seq.is_prefilling:
            plan.num_prefill_tokens += n
        else:
            plan.num_decode_seqs += 1
            plan.num_decode_context_tokens += seq.num_computed + n

    def _preempt(self, seq: MockSequence) -> None:
        assert seq.table is not None
        self.blocks.free(seq.table)
        seq.table = None
        seq.num_computed = 0
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _finish(self, seq: MockSequence, reason: FinishReason) -> None:
        if seq.table is not None:
            self.blocks.free(seq.table)
            seq.table = None
        seq.finish_reason = reason
        seq.event.set()
