"""Sampling: greedy, temperature/top-k/top-p, per-request seeds, logprobs (no model needed)."""

from __future__ import annotations

import math

import torch
from tandem.worker.engine import SamplingConfig
from tandem.worker.torch_engine.sampling import SampleRow, greedy_tokens, make_generator, sample


def _logits(rows: int = 4, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _row(seed: int | None = None, **kw: object) -> SampleRow:
    params = SamplingConfig(**kw)  # type: ignore[arg-type]
    gen = make_generator(torch.device("cpu"), seed if seed is not None else 0)
    return SampleRow(params, None if params.is_greedy else gen)


def test_greedy_is_argmax() -> None:
    logits = _logits()
    tokens, logprobs = sample(logits, [_row() for _ in range(4)])
    assert tokens == logits.argmax(-1).tolist()
    assert logprobs == [None] * 4


def test_greedy_tokens_take_the_first_of_tied_maxima() -> None:
    # Whole-number logits tie often; 4096 columns take the chunked path.
    logits = torch.randint(0, 50, (16, 4096), generator=torch.Generator().manual_seed(0)).float()
    logits[3] = float("-inf")
    for dtype in (torch.float32, torch.bfloat16):  # the model hands over bf16 logits as they are
        assert torch.equal(greedy_tokens(logits.to(dtype)), logits.argmax(-1))
    odd = logits[:, :1000]  # not a whole number of chunks: the plain path
    assert torch.equal(greedy_tokens(odd), odd.argmax(-1))


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    logits = _logits(rows=3)
    alone, _ = sample(logits[1:2], [_row(seed=7, temperature=1.0)])
    batched, _ = sample(
        logits, [_row(seed=1, temperature=1.0), _row(seed=7, temperature=1.0), _row()]
    )
    assert batched[1] == alone[0]
    draws = {tuple(sample(logits, [_row(seed=s, temperature=2.0)] * 3)[0]) for s in range(20)}
    assert len(draws) > 1  # different seeds draw differently


def test_top_k_one_is_greedy_and_top_k_limits_support() -> None:
    logits = _logits(rows=1, vocab=30)
    best = int(logits.argmax())
    for s in range(10):
        assert sample(logits, [_row(seed=s, temperature=5.0, top_k=1)])[0] == [best]
    top3 = set(logits[0].topk(3).indices.tolist())
    picks = {sample(logits, [_row(seed=s, temperature=50.0, top_k=3)])[0][0] for s in range(60)}
    assert picks <= top3 and len(picks) > 1


def test_top_p_keeps_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    picks = {sample(logits, [_row(seed=s, temperature=1.0, top_p=0.7)])[0][0] for s in range(80)}
    assert picks == {0, 1}
    tiny = {sample(logits, [_row(seed=s, temperature=1.0, top_p=0.01)])[0][0] for s in range(20)}
    assert tiny == {0}


def test_sampling_follows_the_distribution() -> None:
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log()[None]
    gen = make_generator(torch.device("cpu"), 3)
    row = SampleRow(SamplingConfig(temperature=1.0), gen)
    counts = [0, 0, 0]
    for _ in range(2000):
        counts[sample(logits, [row])[0][0]] += 1
    assert abs(counts[0] / 2000 - 0.7) < 0.05 and abs(counts[2] / 2000 - 0.1) < 0.03


def test_logprobs_are_model_logprobs() -> None:
    logits = _logits(rows=2)
    rows = [_row(logprobs=True, top_logprobs=3), _row(seed=5, temperature=0.7, logprobs=True)]
    tokens, logprobs = sample(logits, rows)
    ref = torch.log_softmax(logits, -1)
    first, second = logprobs
    assert first is not None and second is not None
    assert first.token_id == tokens[0]
    assert math.isclose(first.logprob, float(ref[0, tokens[0]]), rel_tol=1e-5)
    assert [t for t, _ in first.top] == ref[0].topk(3).indices.tolist()
    assert first.top[0][0] == tokens[0]  # greedy: the chosen token is the top one
    assert math.isclose(second.logprob, float(ref[1, tokens[1]]), rel_tol=1e-5)
    assert second.top == []
