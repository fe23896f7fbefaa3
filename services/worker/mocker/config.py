"""Settings of the mocker engine (flags are generated from the field names)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.runtime.config import option
from tandem.runtime.model_card import (
    DEFAULT_EOS_TOKEN_IDS,
    DEFAULT_MODEL_NAME,
    DEFAULT_VOCAB_SIZE,
    default_model_path,
)

from ..kvbm.config import KvbmConfig
from ..scheduler_config import SchedulerConfig

MOCKER_CONTEXT_LENGTH = 131_072
"""The mocker stands in for GPU-sized models: production traces carry prompts far past
SmolLM2's 8,192 tokens. The KV pool still caps it (`max_model_len`)."""


def _mocker_scheduler() -> SchedulerConfig:
    # A simulated GPU batches more than the embedded CPU engine by default.
    return SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=8192, watermark=0.01)


@dataclass(frozen=True, slots=True)
class MockerConfig:
    """Mocker engine: a simulated paged KV cache, scheduler and step timing (no model).

    Timing defaults approximate a mid-size (~8B) model on one modern GPU.
    """

    model_name: str = option(
        DEFAULT_MODEL_NAME, "model name served and advertised in the model card"
    )
    model_path: str = option(
        "",
        "tokenizer/chat-template source advertised in the model card; empty = bundled SmolLM2 GGUF",
    )
    num_kv_blocks: int = option(16384, "simulated KV cache blocks")
    scheduler: SchedulerConfig = option(
        help="KV paging and batching limits", default_factory=_mocker_scheduler
    )
    vocab_size: int = option(
        DEFAULT_VOCAB_SIZE, "generated token ids are drawn from [0, vocab_size)"
    )
    context_length: int = option(
        MOCKER_CONTEXT_LENGTH, "longest prompt + output (capped by num_kv_blocks x block size)"
    )
    eos_token_id: int = option(
        DEFAULT_EOS_TOKEN_IDS[0], "EOS id advertised in the model card (never generated)"
    )
    speedup_ratio: float = option(
        1.0, "divide every simulated time by this (10 = ten times faster)"
    )
    prefill_step_seconds: float = option(0.015, "fixed cost of a step that prefills")
    prefill_token_seconds: float = option(20e-6, "cost per uncached prompt token prefilled")
    decode_step_seconds: float = option(0.006, "fixed cost of a decode-only step")
    decode_seq_seconds: float = option(30e-6, "decode cost per sequence in the batch")
    decode_kv_token_seconds: float = option(
        40e-9, "decode cost per context token read (KV bandwidth)"
    )
    kv_bytes_per_token: int = option(
        131_072,
        "KV cache bytes per token of the simulated model (an 8B Llama in bf16: 32 layers x "
        "8 KV heads x 128 dims x K+V x 2 bytes); what a disaggregated transfer moves",
    )
    kv_transfer_bandwidth: float = option(
        25.0, "GB/s between workers for disaggregated KV transfers (simulated, no bytes move)"
    )
    kvbm: KvbmConfig = option(
        help="tiered KV cache below the simulated device pool (no bytes move)",
        default_factory=KvbmConfig,
    )
    kvbm_host_bandwidth: float = option(
        25.0, "GB/s between the device pool and host memory (simulated; PCIe 5 x16 in practice)"
    )
    kvbm_disk_bandwidth: float = option(
        5.0, "GB/s between host memory and the disk tier (simulated; one NVMe drive)"
    )

    def __post_init__(self) -> None:
        if self.num_kv_blocks <= 0:
            raise ValueError("num_kv_blocks must be positive")
        if self.vocab_size < 2 or self.context_length < 2:
            raise ValueError("vocab_size and context_length must be at least 2")
        if self.speedup_ratio <= 0:
            raise ValueError("speedup_ratio must be positive")
        if self.kv_bytes_per_token <= 0 or self.kv_transfer_bandwidth <= 0:
            raise ValueError("kv_bytes_per_token and kv_transfer_bandwidth must be positive")
        if self.kvbm_host_bandwidth <= 0 or self.kvbm_disk_bandwidth <= 0:
            raise ValueError("kvbm_host_bandwidth and kvbm_disk_bandwidth must be positive")

    @property
    def resolved_model_path(self) -> str:
        return self.model_path or default_model_path()

    @property
    def max_model_len(self) -> int:
        """Longest sequence that fits: the context length, capped by the whole KV pool."""
        return min(self.context_length, self.num_kv_blocks * self.scheduler.kv_cache_block_size)

    def step_seconds(
        self, num_prefill_tokens: int, num_decode_seqs: int, num_decode_context_tokens: int
    ) -> float:
        """Simulated wall time of one step (already divided by `speedup_ratio`)."""
        if num_prefill_tokens:
            base = self.prefill_step_seconds + self.prefill_token_seconds * num_prefill_tokens
        elif num_decode_seqs:
            base = self.decode_step_seconds
        else:
            return 0.0
        base += self.decode_seq_seconds * num_decode_seqs
        base += self.decode_kv_token_seconds * num_decode_context_tokens
        return base / self.speedup_ratio
