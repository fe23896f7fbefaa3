"""A Llama-family decoder (RMSNorm, RoPE, GQA, SwiGLU) that runs over a paged KV cache.

One forward pass takes every token scheduled in an engine step, flattened:
first the decode tokens (one per sequence), then the prefill chunks. Linear
layers run on the flat batch; attention runs once for all decodes (padded
gather of their blocks + SDPA with a mask) and once per prefill chunk (SDPA,
causal, over the cached prefix + the chunk).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .linear import Linears
from .model_config import ModelConfig


@dataclass(slots=True)
class PrefillChunk:
    """A run of consecutive prompt tokens of one sequence inside the flat batch."""

    start: int  # offset of the chunk in the flat token batch
    num_tokens: int
    num_context: int  # tokens of this sequence already in the KV cache before the chunk
    block_ids: torch.Tensor | None  # blocks covering context + chunk (None when no context)
    # [num_tokens, num_context + num_tokens] additive (0 / -inf, model dtype); None: no context
    mask: torch.Tensor | None


@dataclass(slots=True)
class StepBatch:
    """Everything one forward pass needs, already on the model's device."""

    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    slot_mapping: torch.Tensor  # [T] long: flat KV slot (block * block_size + offset)
    logits_indices: torch.Tensor  # [S] long: rows of the flat batch that need logits
    num_decodes: int = 0
    decode_block_ids: torch.Tensor | None = None  # [D, max_blocks] long (padded)
    # [D, 1, 1, max_blocks * block_size] additive (0 / -inf, model dtype)
    decode_mask: torch.Tensor | None = None
    prefills: list[PrefillChunk] = field(default_factory=list)


class LlamaModel:
    """Weights of a Llama-family model and its forward pass over a paged KV cache.

    Q/K/V and gate/up projections are fused into one matrix each, so a layer is
    four matmuls. Not an nn.Module: it never trains and owns no autograd state.
    """

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.config = config
        self.dtype = dtype
        self.device = device

        def take(name: str) -> torch.Tensor:
            return weights.pop(name).to(device=device, dtype=dtype).contiguous()

        self.linear = Linears(dtype, device)
        pack = self.linear.prepare

        self.embed = take("model.embed_tokens.weight")
        self.layers: list[dict[str, torch.Tensor]] = []
        for i in range(config.num_layers):
            p = f"model.layers.{i}."
            attn, mlp = p + "self_attn.", p + "mlp."
            qkv = [take(attn + n + ".weight") for n in ("q_proj", "k_proj", "v_proj")]
            gate_up = [take(mlp + n + ".weight") for n in ("gate_proj", "up_proj")]
            self.layers.append(
                {
                    "attn_norm": take(p + "input_layernorm.weight"),
                    "qkv": pack(torch.cat(qkv).contiguous()),
                    "o": pack(take(attn + "o_proj.weight")),
                    "mlp_norm": take(p + "post_attention_layernorm.weight"),
                    "gate_up": pack(torch.cat(gate_up).contiguous()),
                    "down": pack(take(mlp + "down_proj.weight")),
                }
            )
        self.norm = take("model.norm.weight")
        if "lm_head.weight" in weights and not config.tie_word_embeddings:
            self.lm_head = pack(take("lm_head.weight"))
        else:
            self.lm_head = pack(self.embed)
        inv_freq = 1.0 / (
            config.rope_theta
            ** (torch.arange(0, config.head_dim, 2, dtype=torch.int64).float() / config.head_dim)
        )
        t = torch.arange(config.context_length, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos().to(device=device, dtype=dtype)
        sin = emb.sin()
        sin[:, : config.head_dim // 2] *= -1
        self.sin_signed = sin.to(device=device, dtype=dtype)
        self.scale = config.head_dim**-0.5

    # -- KV cache --------------------------------------------------------------

    def kv_bytes_per_block(self, block_size: int) -> int:
        c = self.config
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * c.num_layers * block_size * c.kv_size * itemsize

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> list[torch.Tensor]:
        """One [num_blocks, block_size, 2 (K, V), kv_heads, head_dim] tensor per layer.

        A token's K and V sit side by side, as the fused QKV projection makes
        them, so one copy writes both and one gather reads a block's K and V.
        Zero-filled: padded decode gathers read unused slots, and masked-out
        garbage (NaN) would still poison SDPA's weighted sum.
        """
        c = self.config
        shape = (num_blocks, block_size, 2, c.num_kv_heads, c.head_dim)
        return [
            torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(c.num_layers)
        ]

    # -- forward ---------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, batch: StepBatch, kv_cache: list[torch.Tensor]) -> torch.Tensor:
        """Logits ([S, vocab], model dtype) for `batch.logits_indices`; writes the batch's KV.

        Not upcast to float32 here: at batch 32 that is a 6 MB copy per step,
        and greedy rows (most) need only the argmax, which bf16 preserves
        exactly. `sample` upcasts the rows that need probabilities.
        """
        c = self.config
        num_tokens = batch.input_ids.shape[0]
        hq, hkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        q_size, kv_size = c.q_size, c.kv_size
        eps = c.rms_norm_eps
        hidden_shape = (c.hidden_size,)
        cos = self.cos.index_select(0, batch.positions).unsqueeze(1)
        sin = self.sin_signed.index_select(0, batch.positions).unsqueeze(1)
        half = hd // 2
        slots = batch.slot_mapping

        linear = self.linear
        x = F.embedding(batch.input_ids, self.embed)
        for layer, cache in zip(self.layers, kv_cache, strict=True):
            h = F.rms_norm(x, hidden_shape, layer["attn_norm"], eps)
            qkv = linear(h, layer["qkv"])
            qk = qkv[:, : q_size + kv_size].view(num_tokens, hq + hkv, hd)
            # RoPE in place, HF "rotate_half" layout: x * cos + [-x2, x1] * sin,
            # with the sign folded into the sin table so [x2, x1] is a plain roll.
            torch.addcmul(qk * cos, qk.roll(half, dims=-1), sin, out=qk)
            kv = qkv[:, q_size:].view(num_tokens, 2, hkv, hd)
            cache.view(-1, 2, hkv, hd).index_copy_(0, slots, kv)
            q = qk[:, :hq]
            attn = self._attention(batch, q, kv[:, 0], kv[:, 1], cache)
            x = linear.add(x, attn, layer["o"])
            h = F.rms_norm(x, hidden_shape, layer["mlp_norm"], eps)
            gate, up = linear(h, layer["gate_up"]).chunk(2, dim=-1)
            x = linear.add(x, F.silu(gate).mul_(up), layer["down"])
        x = F.rms_norm(x[batch.logits_indices], hidden_shape, self.norm, eps)
        return linear(x, self.lm_head)

    def _attention(
        self,
        batch: StepBatch,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: torch.Tensor,
    ) -> torch.Tensor:
        c = self.config
        hq, hkv, hd = c.num_heads, c.num_kv_heads, c.head_dim
        outs: list[torch.Tensor] = []
        d = batch.num_decodes
        # index_select on a [blocks, block_size * 2 * kv * hd] view: much cheaper
        # on CPU than advanced indexing of the 5-d cache.
        blocks = cache.view(cache.shape[0], -1)
        if d:
            assert batch.decode_block_ids is not None
            ids = batch.decode_block_ids
            ctx = ids.shape[1] * cache.shape[1]
            # [D * blocks, block_size * 2 * kv * hd] -> K, V as [D, kv, ctx, hd]
            kvd = blocks.index_select(0, ids.view(-1)).view(d, ctx, 2, hkv, hd)
            kd = kvd[:, :, 0].transpose(1, 2)
            vd = kvd[:, :, 1].transpose(1, 2)
            # One query position per sequence: the query heads sharing a KV head
            # ride in the "query length" axis, so GQA needs no repeat.
            qd = q[:d].reshape(d, hkv, hq // hkv, hd)
            o = F.scaled_dot_product_attention(
                qd, kd, vd, attn_mask=batch.decode_mask, scale=self.scale
            )
            outs.append(o.reshape(d, hq * hd))
        for chunk in batch.prefills:
            s, n = chunk.start, chunk.num_tokens
            qp = q[s : s + n].transpose(0, 1).unsqueeze(0)
            if chunk.num_context == 0:
                kp = k[s : s + n].transpose(0, 1).unsqueeze(0)
                vp = v[s : s + n].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(
                    qp, kp, vp, is_causal=True, scale=self.scale, enable_gqa=True
                )
            else:
                assert chunk.block_ids is not None
                total = chunk.num_context + n
                kvp = blocks.index_select(0, chunk.block_ids).view(-1, 2, hkv, hd)[:total]
                kp, vp = kvp[:, 0], kvp[:, 1]
                o = F.scaled_dot_product_attention(
                    qp,
                    kp.transpose(0, 1).unsqueeze(0),
                    vp.transpose(0, 1).unsqueeze(0),
                    attn_mask=chunk.mask,
                    scale=self.scale,
                    enable_gqa=True,
                )
            outs.append(o[0].transpose(0, 1).reshape(n, hq * hd))
        return outs[0] if len(outs) == 1 else torch.cat(outs)
