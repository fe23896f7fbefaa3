"""A request inside the mocker: its fake-token generator and the hand-off to its consumer."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import xxhash

from ..engine import EngineOutput, EngineRequest, OutputListener, TokenLogprob
from ..sequence import Sequence

# Alternatives in fake top-logprobs are spread by this prime so they are distinct ids.
_TOP_STRIDE = 7919


def token_rng(request: EngineRequest) -> random.Random:
    """Per-request generator: same seed + same prompt => same tokens.

    Greedy requests without a seed are deterministic in the prompt (as greedy
    decoding of a real model is); sampled requests without a seed are random.
    """
    sampling = request.sampling
    if sampling.seed is None and not sampling.is_greedy:
        return random.Random()
    seed = (sampling.seed or 0) & 0xFFFF_FFFF_FFFF_FFFF
    packed = np.asarray(request.token_ids, dtype="<u4").tobytes()
    return random.Random(xxhash.xxh3_64_intdigest(packed, seed))


@dataclass(slots=True, eq=False, kw_only=True)
class MockSequence(Sequence):
    """A `Sequence` plus its fake-token generator and where its outputs go."""

    rng: random.Random
    vocab_size: int
    banned_ids: frozenset[int]  # never generated (EOS)
    num_delivered: int = 0  # output tokens already handed to the consumer
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    listener: OutputListener | None = None  # None once it ended or was aborted

    @property
    def has_output(self) -> bool:
        return self.num_output_tokens > self.num_delivered or self.finish_reason is not None

    def draw_token(self) -> int:
        """A pseudo-random next token (its fake logprob is kept for the consumer)."""
        # random() scaled is a third of randrange's cost; still a function of the seed.
        token = int(self.rng.random() * self.vocab_size)
        while token in self.banned_ids:
            token = (token + 1) % self.vocab_size
        if self.params.logprobs:
            num_top = self.params.top_logprobs
            logprob = -0.05 - 2.0 * self.rng.random()
            top = [(token, logprob)] + [
                ((token + _TOP_STRIDE * (k + 1)) % self.vocab_size, logprob - 0.7 * (k + 1))
                for k in range(max(num_top - 1, 0))
            ]
            self.pending_logprobs.append(TokenLogprob(token, logprob, top if num_top else []))
        return token

    def skip_token(self) -> None:
        """Draw the next token and drop it: the first token came from a prefill worker, which
        drew it from the same generator (same prompt, same seed), so the rest matches."""
        self.draw_token()
        if self.params.logprobs:
            self.pending_logprobs.pop()

    def take_output(self) -> EngineOutput:
        """Everything produced since the last call, in one output."""
        start = self.num_prompt_tokens + self.num_delivered
        out = EngineOutput(token_ids=self.token_ids[start:], finish_reason=self.finish_reason)
        self.num_delivered += len(out.token_ids)
        if self.params.logprobs:
            out.logprobs, self.pending_logprobs = self.pending_logprobs, []
        if self.finish_reason is not None:
            out.usage = self.usage()
        return out
