"""What the torch engine builds when it starts: the model, its KV cache, the scheduler."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tandem.runtime.host import usable_cpus
from tandem.worker.admission import EngineLimits
from tandem.worker.kv_event_sink import KvEventSink
from tandem.worker.kvbm.manager import Kvbm
from tandem.worker.scheduler import Scheduler

from .config import TorchEngineConfig
from .loader import load_weights, num_kv_blocks
from .model import LlamaModel
from .model_config import ModelConfig
from .runner import ModelRunner, TorchSequence
from .tiers import torch_kvbm

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineParts:
    """Owns what exists only once the model is loaded; built and used in the engine thread."""

    model_config: ModelConfig
    model: LlamaModel
    scheduler: Scheduler[TorchSequence]  # and, through it, the BlockManager
    runner: ModelRunner  # the KV cache tensors
    limits: EngineLimits  # what requests may ask of this model and cache
    kvbm: Kvbm | None = None  # host memory / disk tiers below the KV cache (--connector kvbm)


def load_parts(
    config: TorchEngineConfig,
    sink: KvEventSink | None,
    weights: tuple[ModelConfig, dict[str, torch.Tensor]] | None = None,
    wake: Callable[[], None] = lambda: None,
) -> EngineParts:
    """Load the model (or use `weights`), size the KV cache and build the scheduler over it.

    `wake`: makes the step loop look again (a tiered cache's copy finished)."""
    device = config.torch_device
    if device.type == "cpu":
        torch.set_num_threads(config.num_threads or usable_cpus())
    started = time.perf_counter()
    if weights is not None:
        model_config, tensors = weights[0], dict(weights[1])
    else:
        model_config, tensors = load_weights(config.resolved_model_path)
    model = LlamaModel(model_config, tensors, config.torch_dtype, device)
    block_size = config.scheduler.kv_cache_block_size
    per_block = model.kv_bytes_per_block(block_size)
    num_blocks = num_kv_blocks(config, model_config, per_block)
    scheduler: Scheduler[TorchSequence] = Scheduler.with_blocks(config.scheduler, num_blocks, sink)
    runner = ModelRunner(model, num_blocks, block_size, config.seed)
    kvbm = None
    if config.kvbm.enabled:
        kvbm = torch_kvbm(config.kvbm, runner.kv_cache, block_size, model_config.name, sink, wake)
        scheduler.block_manager.attach_tiers(kvbm)
    limit = model_config.context_length
    if config.max_model_len > 0:
        limit = min(limit, config.max_model_len)
    limits = EngineLimits(
        context_length=min(limit, num_blocks * block_size),
        vocab_size=model_config.vocab_size,
        eos_token_ids=model_config.eos_token_ids,
    )
    log.info(
        "torch engine loaded model=%s dtype=%s device=%s kv_blocks=%d block_size=%d "
        "kv_gib=%.2f seconds=%.1f",
        model_config.name, config.torch_dtype, device, num_blocks, block_size,
        num_blocks * per_block / 2**30, time.perf_counter() - started,
    )  # fmt: skip
    return EngineParts(model_config, model, scheduler, runner, limits, kvbm)
