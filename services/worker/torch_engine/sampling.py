"""Next-token selection for a batch: greedy, temperature, top-k, top-p, seeds, logprobs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tandem.worker.engine import SamplingConfig, TokenLogprob


@dataclass(slots=True)
class SampleRow:
    """One sequence's sampling settings and its random stream (None: greedy)."""

    params: SamplingConfig
    generator: torch.Generator | None


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return gen


def skip_draws(generator: torch.Generator | None, vocab_size: int, count: int) -> None:
    """Advance `generator` as `count` samples of `sample` would (its noise draw, exactly)."""
    if generator is None:
        return
    for _ in range(count):
        torch.empty(vocab_size, dtype=torch.float32, device=generator.device).exponential_(
            generator=generator
        )


# Vocab slice of the two-pass argmax: small enough to stay in cache, large
# enough that the second pass is cheap.
_ARGMAX_CHUNK = 1024


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Index of each row's largest logit, first index on ties (as `argmax`).

    `max(dim=-1)` tracks indices element by element and is slow on CPU (0.5 ms
    for 32 x 49k bf16 logits, every decode step). `amax` per vocab chunk
    vectorizes, so: the first chunk holding the row's max, then the max
    inside that chunk only; 2x faster, same answer.
    """
    rows, vocab = logits.shape
    num_chunks = vocab // _ARGMAX_CHUNK
    if num_chunks < 2 or vocab % _ARGMAX_CHUNK:
        return logits.max(dim=-1).indices
    chunks = logits.reshape(rows, num_chunks, _ARGMAX_CHUNK)
    best_chunk = chunks.amax(dim=-1).max(dim=-1).indices
    row_ids = torch.arange(rows, device=logits.device)
    in_chunk = chunks[row_ids, best_chunk].max(dim=-1).indices
    return best_chunk * _ARGMAX_CHUNK + in_chunk


def _filter_top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Set logits outside each row's top-k / nucleus to -inf (rows already temperature-scaled)."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)
    k = torch.tensor([kk if 0 < kk < vocab else vocab for kk in top_k], device=logits.device)
    remove = ranks[None, :] >= k[:, None]
    if any(p < 1.0 for p in top_p):
        p = torch.tensor(top_p, device=logits.device, dtype=logits.dtype)
        probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
        # Drop a token when the tokens ranked above it already cover top_p.
        remove |= (probs.cumsum(dim=-1) - probs) >= p[:, None]
    remove[:, 0] = False  # the most likely token always survives
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(
    logits: torch.Tensor, rows: list[SampleRow]
) -> tuple[list[int], list[TokenLogprob | None]]:
    """Pick one token per row of `logits` ([rows, vocab], float32 or the model's dtype).

    Greedy picks come straight from `logits` (an upcast keeps the order and
    ties); rows that need probabilities are upcast to float32 first, so the
    result does not depend on the dtype the logits arrive in.

    Seeded rows draw only from their own generator, so their tokens do not
    depend on what else is in the batch. Logprobs are those of the model's
    distribution (before temperature / top-k / top-p), as OpenAI reports them.
    """
    tokens = greedy_tokens(logits)
    random_rows = [i for i, r in enumerate(rows) if not r.params.is_greedy]
    if random_rows:
        idx = torch.tensor(random_rows, device=logits.device)
        temps = torch.tensor(
            [rows[i].params.temperature for i in random_rows], device=logits.device
        )
        scaled = logits[idx].float() / temps[:, None]
        top_k = [rows[i].params.top_k for i in random_rows]
        top_p = [rows[i].params.top_p for i in random_rows]
        if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
            scaled = _filter_top_k_top_p(scaled, top_k, top_p)
        probs = scaled.softmax(dim=-1)
        for j, i in enumerate(random_rows):
            # Exponential race == multinomial draw, but with a per-row generator
            # (`skip_draws` consumes exactly what this draw does: keep them alike).
            noise = torch.empty_like(probs[j]).exponential_(generator=rows[i].generator)
            tokens[i] = (probs[j] / noise).argmax()
    token_list: list[int] = tokens.tolist()
    logprobs: list[TokenLogprob | None] = [None] * len(rows)
    lp_rows = [i for i, r in enumerate(rows) if r.params.logprobs or r.params.top_logprobs > 0]
    if lp_rows:
        idx = torch.tensor(lp_rows, device=logits.device)
        lp = torch.log_softmax(logits[idx].float(), dim=-1)
        chosen = lp.gather(1, tokens[idx][:, None])[:, 0].tolist()
        num_top = max(rows[i].params.top_logprobs for i in lp_rows)
        top_vals: list[list[float]] = []
        top_ids: list[list[int]] = []
        if num_top > 0:
            vals, ids = lp.topk(num_top, dim=-1)
            top_vals, top_ids = vals.tolist(), ids.tolist()
        for j, i in enumerate(lp_rows):
            n = rows[i].params.top_logprobs
            top = list(zip(top_ids[j][:n], top_vals[j][:n], strict=True)) if n else []
            logprobs[i] = TokenLogprob(token_list[i], chosen[j], top)
    return token_list, logprobs
