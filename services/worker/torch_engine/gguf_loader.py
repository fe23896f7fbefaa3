"""Load a Llama-family GGUF file: hyperparameters from its metadata, dequantized weights.

Weights come back in the HF transformers layout and naming, so the model has
one loading path whichever format the weights were stored in.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from .model_config import ModelConfig

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def model_name_from_path(path: str) -> str:
    """`.../SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct`."""
    stem = os.path.basename(path)
    if stem.endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    return re.sub(r"[.-](Q\d\w*|F16|F32|BF16|IQ\w+)$", "", stem, flags=re.IGNORECASE)


def read_gguf_config(reader: GGUFReader, path: str) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"unsupported GGUF architecture {arch!r} (only llama-family)")
    num_heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    vocab = _field(reader, "llama.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = {int(_field(reader, "tokenizer.ggml.eos_token_id", 2))}
    eot = _field(reader, "tokenizer.ggml.eot_token_id")
    if eot is not None:
        eos.add(int(eot))
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    return ModelConfig(
        name=model_name_from_path(path),
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_layers=int(_field(reader, "llama.block_count")),
        num_heads=num_heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", num_heads)),
        head_dim=int(_field(reader, "llama.rope.dimension_count", hidden // num_heads)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        context_length=int(_field(reader, "llama.context_length", 2048)),
        tie_word_embeddings="output.weight" not in {t.name for t in reader.tensors},
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=tuple(sorted(eos)),
    )


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> HF half-split)."""
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def load_gguf(path: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Hyperparameters and float32 weights (HF names and layout) of a GGUF file."""
    reader = GGUFReader(path)
    config = read_gguf_config(reader, path)
    weights: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        array = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        name = _GLOBAL_NAMES.get(tensor.name)
        if name is None:
            match = _LAYER_RE.fullmatch(tensor.name)
            if match is None or match.group(2) not in _LAYER_NAMES:
                continue  # e.g. rope_freqs: not needed by this model code
            layer, kind, suffix = match.groups()
            if kind == "attn_q":
                array = unpermute_rope_rows(array, config.num_heads)
            elif kind == "attn_k":
                array = unpermute_rope_rows(array, config.num_kv_heads)
            name = f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"
        if not array.flags.writeable:  # F32 tensors come back as views of the memory map
            array = array.copy()
        weights[name] = torch.from_numpy(np.ascontiguousarray(array))
    return config, weights
