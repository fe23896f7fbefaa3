"""A simulated fleet's prompts: each trace record's token ids and their KV block hashes.

A live worker hashes every prompt it admits; so does a simulated one, and on
a trace of long prompts that was a tenth of the simulator's time, most of it
hashing the same trace blocks again: a trace block (one hash id) is the same
tokens wherever it appears, so the KV blocks inside it hash the same behind
the same parent. `TraceHashes` keeps those hashes per (parent hash, hash id)
and gives each worker a prompt's hashes joined from them (`Sequence.prompt_hashes`:
the scheduler takes them instead of hashing the prompt). The values are
`hash_blocks`'s own (a miss computes them with it, from the prompt's tokens),
so caches, KV events and figures are unchanged; `tests/unit/launcher/test_sim_prompts.py`
checks them against hashing the whole prompt.
"""

from __future__ import annotations

from collections import OrderedDict

from tandem.runtime.block_hash import BLOCK_HASH_SEED, BlockHashes, hash_blocks

from .mooncake_trace import TraceRecord

# One entry is a trace block's KV blocks (32 of 16 tokens in a 512-token trace block): two
# lists of 64-bit ints, about 3 KiB. 32 Ki entries, about 100 MiB, hold an hour of a busy trace.
DEFAULT_MAX_ENTRIES = 32768


class TraceHashes:
    """Owns the KV block hashes of a trace's blocks, kept per (parent hash, hash id), least
    recently used dropped first."""

    def __init__(
        self,
        block_tokens: int,
        block_size: int,
        seed: int = BLOCK_HASH_SEED,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if block_tokens % block_size:
            raise ValueError(
                f"a trace block ({block_tokens} tokens) must hold whole KV blocks of {block_size}"
            )
        self._block_tokens = block_tokens
        self._block_size = block_size
        self._seed = seed
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[int | None, int], BlockHashes] = OrderedDict()
        self.num_hits = 0
        self.num_misses = 0

    def prompt_hashes(self, record: TraceRecord, token_ids: list[int]) -> BlockHashes | None:
        """`hash_blocks(token_ids, block_size, seed)`, where `token_ids` is the record's
        prompt (`prompt_token_ids`); None for a record padded with blocks of its own (fewer
        hash ids than its length needs), which the worker hashes itself. Read-only."""
        block_tokens, bs, seed = self._block_tokens, self._block_size, self._seed
        per_block = block_tokens // bs
        num_kv_blocks = len(token_ids) // bs
        num_trace_blocks = -(-len(token_ids) // block_tokens)
        if len(record.hash_ids) < num_trace_blocks:
            return None
        entries = self._entries
        local: list[int] = []
        sequence: list[int] = []
        parent: int | None = None
        for i, hash_id in enumerate(record.hash_ids[:num_trace_blocks]):
            start = i * per_block  # the trace block's first KV block
            count = min(per_block, num_kv_blocks - start)  # its full KV blocks in the prompt
            if count <= 0:
                break
            key = (parent, hash_id)
            entry = entries.get(key)
            if entry is not None:
                self.num_hits += 1
                entries.move_to_end(key)
            else:
                self.num_misses += 1
                tokens = token_ids[start * bs : (start + count) * bs]
                entry = hash_blocks(tokens, bs, seed, parent)
                if count < per_block:  # the prompt's cut last block: not the whole block's
                    local += entry.local
                    sequence += entry.sequence
                    break
                entries[key] = entry
                if len(entries) > self._max_entries:
                    entries.popitem(last=False)
            if count < per_block:
                local += entry.local[:count]
                sequence += entry.sequence[:count]
                break
            local += entry.local
            sequence += entry.sequence
            parent = entry.sequence[-1]
        return BlockHashes(local, sequence)
