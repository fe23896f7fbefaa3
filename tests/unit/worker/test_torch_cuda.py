"""The torch engine on CUDA against HF transformers on the same GPU; skipped without a GPU.

The weights are a small random Llama checkpoint the test writes itself, so a
GPU machine needs neither the bundled GGUF nor a download; the comparisons
check the same math (paged attention, RoPE, GQA, sampling) as the GGUF tests
do on the CPU.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from tandem.worker.torch_engine import TorchEngine, TorchEngineConfig
from tandem.worker.torch_engine.loader import load_weights
from tandem.worker.torch_engine.model import LlamaModel, PrefillChunk, StepBatch

from tests.support.torch_engine import collect

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA GPU (torch.cuda.is_available() is False)",
    ),
]
CUDA = torch.device("cuda")
VOCAB = 512


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random 4-layer GQA Llama saved by HF; initialised wide so greedy picks are clear-cut."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.1,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("random-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def hf_model(checkpoint: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(CUDA).eval()


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def prefill_logits(model: LlamaModel, ids: list[int]) -> torch.Tensor:
    n = len(ids)
    kv = model.allocate_kv_cache(-(-n // 16), 16)
    batch = StepBatch(
        input_ids=torch.tensor(ids, device=CUDA),
        positions=torch.arange(n, device=CUDA),
        slot_mapping=torch.arange(n, device=CUDA),
        logits_indices=torch.arange(n, device=CUDA),
        prefills=[PrefillChunk(0, n, 0, None, None)],
    )
    return model.forward(batch, kv).float()


def test_logits_match_hf_float32_on_cuda(checkpoint: str, hf_model: Any) -> None:
    config, weights = load_weights(checkpoint)
    ours = LlamaModel(config, weights, torch.float32, CUDA)
    ids = prompt(128, seed=0)
    logits = prefill_logits(ours, ids)
    assert logits.device.type == "cuda"
    with torch.inference_mode():
        ref = hf_model(torch.tensor([ids], device=CUDA)).logits[0].float()
    assert (logits - ref).abs().max().item() < 1e-3


def test_bfloat16_on_cuda_stays_close_to_float32(checkpoint: str) -> None:
    config, weights = load_weights(checkpoint)
    ids = prompt(64, seed=1)
    ref = prefill_logits(LlamaModel(config, dict(weights), torch.float32, CUDA), ids)
    bf16 = prefill_logits(LlamaModel(config, dict(weights), torch.bfloat16, CUDA), ids)
    assert (bf16.argmax(-1) == ref.argmax(-1)).float().mean().item() > 0.8
    assert (bf16.softmax(-1) - ref.softmax(-1)).abs().max().item() < 0.2


async def test_engine_on_cuda_matches_hf_batched_and_cached(checkpoint: str, hf_model: Any) -> None:
    engine = TorchEngine(
        TorchEngineConfig(model_path=checkpoint, device="cuda", dtype="float32", num_kv_blocks=256),
    )
    await engine.start()
    try:
        assert engine.model.device.type == "cuda"
        prompts = [prompt(40 + 9 * i, seed=10 + i) for i in range(3)]
        alone = [(await collect(engine, p, f"a{i}", max_tokens=16, ignore_eos=True))[0]
                 for i, p in enumerate(prompts)]  # fmt: skip
        for p, tokens in zip(prompts, alone, strict=True):
            with torch.inference_mode():
                ref = hf_model.generate(
                    torch.tensor([p], device=CUDA), max_new_tokens=16, min_new_tokens=16,
                    do_sample=False, pad_token_id=0,
                )[0, len(p):].tolist()  # fmt: skip
            assert tokens == ref
        # Together in one batch, and again with their prompts now in the prefix cache.
        for round_ in ("batched", "cached"):
            runs = await asyncio.gather(
                *(collect(engine, p, f"{round_}{i}", max_tokens=16, ignore_eos=True)
                  for i, p in enumerate(prompts))
            )  # fmt: skip
            assert [tokens for tokens, _ in runs] == alone, round_
        assert engine.stats().prefix_cache_hit_rate > 0
    finally:
        await engine.stop()
