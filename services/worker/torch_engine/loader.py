"""Where the engine's weights come from and how many KV blocks fit next to them."""

from __future__ import annotations

import os

import torch
from tandem.runtime.startup import StartupError

from .config import TorchEngineConfig
from .model_config import ModelConfig


def load_weights(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A GGUF file or an HF safetensors directory."""
    if os.path.isdir(path):
        from .safetensors_loader import load_safetensors_dir

        return load_safetensors_dir(path)
    if not os.path.isfile(path):
        raise StartupError(
            f"model not found: {path!r} (--model-path takes a GGUF file or a safetensors directory)"
        )
    from .gguf_loader import load_gguf

    return load_gguf(path)


def name_from_path(path: str) -> str:
    """The served model name: the checkpoint directory, or the GGUF file without its quant tag."""
    from .gguf_loader import model_name_from_path

    if os.path.isdir(path):
        return os.path.basename(os.path.normpath(path))
    return model_name_from_path(path)


def num_kv_blocks(config: TorchEngineConfig, model: ModelConfig, bytes_per_block: int) -> int:
    """--num-kv-blocks, else what the GiB / memory-fraction budget holds (capped at useful)."""
    if config.num_kv_blocks > 0:
        return config.num_kv_blocks
    device = config.torch_device
    if config.kv_cache_memory_gib > 0:
        budget = int(config.kv_cache_memory_gib * 2**30)
    elif device.type == "cuda":
        budget = int(torch.cuda.mem_get_info(device)[0] * config.kv_cache_memory_fraction)
    else:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        budget = int(host * config.kv_cache_memory_fraction)
    block_size = config.scheduler.kv_cache_block_size
    max_useful = config.scheduler.max_num_seqs * -(-model.context_length // block_size)
    return max(1, min(budget // bytes_per_block, max_useful))
