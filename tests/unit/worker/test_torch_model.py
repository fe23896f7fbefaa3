"""The torch engine's model against an independent reference: HF transformers, same GGUF."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tandem.worker.torch_engine import TorchEngine
from tandem.worker.torch_engine.config import DEFAULT_GGUF_FILE, default_model_path
from tandem.worker.torch_engine.gguf_loader import model_name_from_path, unpermute_rope_rows
from tandem.worker.torch_engine.model import LlamaModel, PrefillChunk, StepBatch
from tandem.worker.torch_engine.safetensors_loader import load_safetensors_dir

from tests.support.torch_engine import (
    CHAT_PROMPTS,
    collect,
    default_weights,
    random_prompt,
    running_engine,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    heads, head_dim, cols = 3, 8, 5
    hf = np.arange(heads * head_dim * cols, dtype=np.float32).reshape(heads * head_dim, cols)
    # convert_hf_to_gguf.py's permute
    gguf = hf.reshape(heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(hf.shape)
    assert np.array_equal(unpermute_rope_rows(gguf, heads), hf)


def test_model_name_from_gguf_file_name() -> None:
    assert model_name_from_path("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct"
    assert model_name_from_path("llama-3-8b-f16.gguf") == "llama-3-8b"


def _prefill_logits(model: LlamaModel, ids: list[int]) -> torch.Tensor:
    n = len(ids)
    kv = model.allocate_kv_cache(-(-n // 16), 16)
    batch = StepBatch(
        input_ids=torch.tensor(ids),
        positions=torch.arange(n),
        slot_mapping=torch.arange(n),
        logits_indices=torch.arange(n),
        prefills=[PrefillChunk(0, n, 0, None, None)],
    )
    return model.forward(batch, kv).float()


@pytest.fixture(scope="module")
def hf_model() -> Any:
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=DEFAULT_GGUF_FILE, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def engine() -> Iterator[TorchEngine]:
    with running_engine() as (eng, _):
        yield eng


@pytest.mark.slow
def test_logits_match_hf_float32(hf_model: Any) -> None:
    config, weights = default_weights()
    ours = LlamaModel(config, dict(weights), torch.float32, torch.device("cpu"))
    ids = random_prompt(128, seed=0)
    logits = _prefill_logits(ours, ids)
    with torch.inference_mode():
        ref = hf_model(torch.tensor([ids])).logits[0].float()
    assert (logits - ref).abs().max().item() < 1e-3


@pytest.mark.slow
async def test_greedy_generation_matches_hf(hf_model: Any, engine: TorchEngine) -> None:
    for prompt in CHAT_PROMPTS:
        ours, outs = await collect(engine, prompt, max_tokens=24)
        with torch.inference_mode():
            ref = hf_model.generate(
                torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=2,
                pad_token_id=2,
            )[0, len(prompt):].tolist()  # fmt: skip
        assert ours == ref
        assert outs[-1].finish_reason == ("stop" if ref[-1] == 2 else "length")


@pytest.mark.slow
def test_safetensors_directory_loads_the_same_model(hf_model: Any, tmp_path: Path) -> None:
    # HF will not save_pretrained a GGUF-loaded model; write the same files it would.
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    hf_config = hf_model.config.to_dict()
    hf_config.pop("quantization_config", None)
    (tmp_path / "config.json").write_text(json.dumps(hf_config))
    config, weights = load_safetensors_dir(str(tmp_path))
    gguf_config, gguf_weights = default_weights()
    assert config.num_kv_heads == gguf_config.num_kv_heads
    assert config.rope_theta == gguf_config.rope_theta and config.tie_word_embeddings
    from_st = LlamaModel(config, weights, torch.float32, torch.device("cpu"))
    from_gguf = LlamaModel(gguf_config, dict(gguf_weights), torch.float32, torch.device("cpu"))
    ids = random_prompt(20, seed=1)
    assert torch.allclose(_prefill_logits(from_st, ids), _prefill_logits(from_gguf, ids), atol=1e-4)


@pytest.mark.slow
def test_bfloat16_stays_close_to_float32() -> None:
    config, weights = default_weights()
    ids = random_prompt(64, seed=2)
    ref = _prefill_logits(
        LlamaModel(config, dict(weights), torch.float32, torch.device("cpu")), ids
    )
    bf16 = _prefill_logits(
        LlamaModel(config, dict(weights), torch.bfloat16, torch.device("cpu")), ids
    )
    agree = (bf16.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree > 0.8
    assert (bf16.softmax(-1) - ref.softmax(-1)).abs().max().item() < 0.2
