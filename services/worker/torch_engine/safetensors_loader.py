"""Load a Llama-family HF checkpoint directory (config.json + *.safetensors)."""

from __future__ import annotations

import glob
import json
import os

import torch
from safetensors.torch import load_file
from tandem.runtime.startup import StartupError

from .model_config import ModelConfig


def read_hf_config(directory: str) -> ModelConfig:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    if raw.get("model_type", "llama") != "llama" or raw.get("attention_bias", False):
        raise ValueError(f"unsupported model_type {raw.get('model_type')!r} (llama-family only)")
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ValueError(f"unsupported rope scaling {rope!r}")
    num_heads = int(raw["num_attention_heads"])
    eos = raw.get("eos_token_id", [])
    eos_ids = tuple(sorted({int(e) for e in (eos if isinstance(eos, list) else [eos])}))
    return ModelConfig(
        name=os.path.basename(os.path.normpath(directory)),
        vocab_size=int(raw["vocab_size"]),
        hidden_size=int(raw["hidden_size"]),
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
        head_dim=int(raw.get("head_dim") or raw["hidden_size"] // num_heads),
        rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        context_length=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos_ids,
    )


def load_safetensors_dir(directory: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Hyperparameters and weights (HF names, stored dtype) of a checkpoint directory."""
    config = read_hf_config(directory)
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise StartupError(f"no *.safetensors in {directory}")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(file))
    if config.tie_word_embeddings or "lm_head.weight" not in weights:
        weights.pop("lm_head.weight", None)
        config = _with_tied(config)
    return config, weights


def _with_tied(config: ModelConfig) -> ModelConfig:
    from dataclasses import replace

    return replace(config, tie_word_embeddings=True)
