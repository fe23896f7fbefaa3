"""A generation request as the frontend tracks it, and what the generation path yields.

Every hop shares these: an endpoint (`endpoints.py`) builds the `GenerationJob`,
the `Generator` runs it, the `OutputProcessor` turns worker messages into
`StepOutput`s and records the `Usage`, a renderer (`responses.py`) turns both
into OpenAI JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .request_types import SamplingOptions

if TYPE_CHECKING:
    from .models import ServedModel

# Output tokens the router assumes for a request with no max_tokens on a model of unknown context.
_UNKNOWN_CONTEXT_OUTPUT_ESTIMATE = 4096

# (token_id, logprob, [(alternative_id, logprob), ...])
TokenLogprob = tuple[int, float, list[tuple[int, float]]]


@dataclass(slots=True)
class Usage:
    """A request's token counts, as the OpenAI `usage` object reports them."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class StepOutput:
    """What one worker message adds: `texts[i]` is the text released with `token_ids[i]`.

    The final output carries `finish_reason`, and any text held back until the end
    (an incomplete character, a partial stop string) as one extra piece with no token.
    """

    token_ids: list[int]
    texts: list[str]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class GenerationJob:
    """A parsed, tokenized request and what happened to it so far.

    Owns the tokens relayed to the client (`generated`, what a migration resends),
    the timings the metrics need, and the worker's `usage` once it finished the request.
    """

    request_id: str
    model: ServedModel
    prompt_ids: list[int]
    sampling: SamplingOptions
    # The request field holding the prompt ("messages" or "prompt"): the `param` of
    # the errors a worker raises about it.
    prompt_param: str = "prompt"
    # The `param` of a context-length error: "max_tokens" when the client gave it,
    # else the prompt's field.
    length_param: str = "max_tokens"
    arrived: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    # Set from the worker's final message; None while running, or when the frontend
    # ended the request itself (a stop string, max_tokens, a disconnect, an error).
    usage: Usage | None = None
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    num_migrations: int = 0
    # W3C trace context from the client (traceparent/tracestate), passed on as gRPC metadata.
    trace_metadata: tuple[tuple[str, str], ...] = ()

    def reported_usage(self) -> Usage:
        """The worker's counts when it finished the request, else the frontend's own."""
        return self.usage or Usage(len(self.prompt_ids), len(self.generated), 0)

    def output_estimate(self) -> int:
        """Tokens still to come, for the router's decode-load estimate (never a limit).

        The client's max_tokens when it gave one; otherwise what the model card's
        context length leaves (or a nominal 4096 when no card says), which only
        guesses: the worker decides where it stops.
        """
        done = len(self.generated)
        max_tokens = self.sampling.max_tokens
        if max_tokens is not None:
            return max(max_tokens - done, 0)
        context = self.model.context_length
        if not context:
            return max(_UNKNOWN_CONTEXT_OUTPUT_ESTIMATE - done, 0)
        return max(context - len(self.prompt_ids) - done, 0)
