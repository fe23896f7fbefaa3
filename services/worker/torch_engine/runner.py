"""Turns a scheduled batch into model inputs, runs the model and samples the next tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tandem.worker.engine import TokenLogprob
from tandem.worker.scheduler import ScheduledBatch
from tandem.worker.sequence import Sequence

from .model import LlamaModel, PrefillChunk, StepBatch
from .sampling import SampleRow, make_generator, sample, skip_draws
from .streams import Stream


@dataclass(slots=True, eq=False, kw_only=True)
class TorchSequence(Sequence):
    """A `Sequence` with its own sampling generator (seeded requests) and its output stream."""

    stream: Stream
    generator: torch.Generator | None = None
    # Draws its seeded generator owes for a token sampled elsewhere (a remote prefill's
    # first token), so that the tokens after it are those an aggregated worker samples.
    draws_to_skip: int = 0


class ModelRunner:
    """Owns the model and the KV cache tensors; runs one step at a time."""

    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int, seed: int) -> None:
        self.model = model
        self.device = model.device
        self.block_size = block_size
        # Random stream of requests that bring no seed of their own.
        self.generator = make_generator(model.device, seed)
        self.kv_cache = model.allocate_kv_cache(num_blocks, block_size)

    def _build(self, batch: ScheduledBatch[TorchSequence]) -> StepBatch:
        bs = self.block_size
        dev = self.device
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_rows: list[int] = []  # one per batch.sampled, in its order

        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        for seq in batch.decodes:
            assert seq.table is not None
            pos = seq.num_computed_tokens
            logits_rows.append(len(input_ids))
            input_ids.append(seq.token_ids[pos])
            positions.append(pos)
            blocks = seq.table.block_ids
            slots.append(blocks[pos // bs] * bs + pos % bs)
            num_blocks = pos // bs + 1
            decode_tables.append(blocks[:num_blocks])
            decode_lens.append(pos + 1)

        chunks: list[PrefillChunk] = []
        for seq, n in batch.prefills:
            assert seq.table is not None
            start = seq.num_computed_tokens
            end = start + n
            offset = len(input_ids)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            blocks = seq.table.block_ids
            slots.extend(blocks[p // bs] * bs + p % bs for p in range(start, end))
            block_ids = mask = None
            if start > 0:
                num_blocks = -(-end // bs)
                block_ids = torch.tensor(blocks[:num_blocks], device=dev)
                key_pos = torch.arange(end, device=dev)
                query_pos = torch.arange(start, end, device=dev)
                mask = self._additive(key_pos[None, :] <= query_pos[:, None])
            chunks.append(PrefillChunk(offset, n, start, block_ids, mask))
            if end == len(seq.token_ids):
                logits_rows.append(offset + n - 1)

        step = StepBatch(
            input_ids=torch.tensor(input_ids, dtype=torch.long, device=dev),
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=dev),
            prefills=chunks,
        )
        if decode_tables:
            width = max(len(t) for t in decode_tables)
            padded = [t + [0] * (width - len(t)) for t in decode_tables]
            step.num_decodes = len(decode_tables)
            step.decode_block_ids = torch.tensor(padded, device=dev)
            key_pos = torch.arange(width * bs, device=dev)
            lens = torch.tensor(decode_lens, device=dev)
            visible = (key_pos[None, :] < lens[:, None]).view(len(padded), 1, 1, -1)
            step.decode_mask = self._additive(visible)
        return step

    def _additive(self, visible: torch.Tensor) -> torch.Tensor:
        """Bool mask -> 0 / -inf in the model dtype, built once per step instead of per layer."""
        mask = torch.zeros(visible.shape, dtype=self.model.dtype, device=self.device)
        return mask.masked_fill_(~visible, float("-inf"))

    def step(
        self, batch: ScheduledBatch[TorchSequence]
    ) -> tuple[list[int], list[TokenLogprob | None]]:
        """Run `batch`; the new token (and its logprob) of each of `batch.sampled`.

        Progress is the scheduler's to advance (`Scheduler.postprocess`).
        """
        step = self._build(batch)
        logits = self.model.forward(step, self.kv_cache)
        if not batch.sampled:
            return [], []
        rows = []
        for s in batch.sampled:
            if s.draws_to_skip:
                skip_draws(s.generator, logits.shape[-1], s.draws_to_skip)
                s.draws_to_skip = 0
            rows.append(SampleRow(s.params, s.generator or self.generator))
        return sample(logits, rows)
