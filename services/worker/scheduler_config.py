"""Settings of the KV block pool and the continuous-batching scheduler, shared by every engine."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.runtime.config import option


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """KV cache paging and batching limits; each engine's config embeds one with its own defaults.

    Flags stay flat (`--max-num-seqs`, not `--scheduler-max-num-seqs`): the
    config parser flattens nested config dataclasses.
    """

    kv_cache_block_size: int = option(16, "tokens per KV block")
    max_num_seqs: int = option(64, "most sequences in one running batch")
    max_num_batched_tokens: int = option(2048, "token budget of one engine step (chunked prefill)")
    enable_prefix_caching: bool = option(True, "reuse KV blocks of identical prompt prefixes")
    watermark: float = option(
        0.01, "fraction of blocks kept free when admitting (fewer preemptions)"
    )

    def __post_init__(self) -> None:
        if self.kv_cache_block_size <= 0:
            raise ValueError("kv_cache_block_size must be positive")
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if not 0.0 <= self.watermark < 1.0:
            raise ValueError("watermark must be in [0, 1)")
