"""One request inside the mocker: its tokens, blocks, progress and output hand-off."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import numpy as np
import xxhash

from ..block_manager import BlockTable
from ..engine import EngineOutput, EngineRequest, FinishReason, TokenLogprob, Usage

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


@dataclass(slots=True, eq=False)
class MockSequence:
    """A request's state; owned by the scheduler, read by its `generate()` consumer."""

    request_id: str
    token_ids: list[int]
    max_len: int  # stop with "length" at this many tokens (prompt + output)
    num_prompt_tokens: int  # for usage: prompt without tokens generated elsewhere
    num_generated_before: int
    max_new_tokens: int
    stop_token_ids: frozenset[int]
    vocab_size: int
    banned_ids: frozenset[int]  # never generated (EOS)
    rng: random.Random
    num_logprobs: int = -1  # -1: no logprobs; else how many top alternatives
    table: BlockTable | None = None
    num_computed: int = 0  # tokens whose KV exists
    prefill_end: int = 0  # len(token_ids) when last admitted
    num_cached_tokens: int = -1  # prefix-cache hit at first admission
    num_generated: int = 0
    finish_reason: FinishReason | None = None
    pending: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < self.prefill_end

    def sample(self) -> int:
        """Append one pseudo-random token (and its fake logprob) and return it."""
        token = self.rng.randrange(self.vocab_size)
        while token in self.banned_ids:
            token = (token + 1) % self.vocab_size
        self.token_ids.append(token)
        self.num_generated += 1
        self.pending.append(token)
        if self.num_logprobs >= 0:
            logprob = -0.05 - 2.0 * self.rng.random()
            top = [(token, logprob)] + [
                ((token + _TOP_STRIDE * (k + 1)) % self.vocab_size, logprob - 0.7 * (k + 1))
                for k in range(max(self.num_logprobs - 1, 0))
            ]
            self.pending_logprobs.append(
                TokenLogprob(token, logprob, top if self.num_logprobs else [])
            )
        return token

    def check_finished(self, token: int) -> FinishReason | None:
        if token in self.stop_token_ids:
            return "stop"
        if self.num_generated >= self.max_new_tokens or len(self.token_ids) >= self.max_len:
            return "length"
        return None

    def take_output(self) -> EngineOutput:
        """Everything produced since the last call, in one output."""
        out = EngineOutput(token_ids=self.pending, finish_reason=self.finish_reason)
        self.pending = []
        if self.num_logprobs >= 0:
            out.logprobs, self.pending_logprobs = self.pending_logprobs, []
        if self.finish_reason is not None:
            out.usage = Usage(
                prompt_tokens=self.num_prompt_tokens,
                completion_tokens=self.num_generated_before + self.num_generated,
                cached_tokens=max(self.num_cached_tokens, 0),
            )
        return out
