"""One request's output work: worker messages in, the `StepOutput`s the client sees out.

Detokenizes, applies stop strings (the frontend holds the text; the worker
applies stop token ids, EOS and max_tokens), collects logprobs, clips to the
client's max_tokens and finishes: the final output flushes held-back text and
takes the worker's usage counts when the worker ended the request.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tandem.runtime.wire import worker_pb2

from .errors import EngineError
from .job import GenerationJob, StepOutput, TokenLogprob, Usage
from .stop_strings import StopStringMatcher

_FINISH_REASONS = {
    worker_pb2.FINISH_REASON_STOP: "stop",
    worker_pb2.FINISH_REASON_LENGTH: "length",
    worker_pb2.FINISH_REASON_ABORT: "abort",
}


class OutputProcessor:
    """Owns one request's detokenizer, stop-string matcher and relay limit.

    It lives as long as the request, across migrations: text already released
    stays released, and `job.generated` (what a new worker is resent) grows
    only with tokens the client was given.
    """

    __slots__ = ("_job", "_generated", "_detok", "_add_one", "_matcher", "_want_logprobs", "_limit")

    def __init__(self, job: GenerationJob) -> None:
        self._job = job
        self._generated = job.generated
        self._detok = job.model.tokenizer.detokenizer()
        self._add_one = self._detok.add_one
        stop = job.sampling.stop
        self._matcher = StopStringMatcher(stop) if stop else None
        self._want_logprobs = job.sampling.logprobs
        # Never relay more than the client asked for; without a max_tokens the
        # worker stops at the context length and no limit applies here.
        max_tokens = job.sampling.max_tokens
        self._limit = sys.maxsize if max_tokens is None else max_tokens

    def step(self, ids: Sequence[int], msg: worker_pb2.GenerateResponse) -> StepOutput:
        """The output for a message carrying tokens (`ids` is `msg.token_ids`).

        Finished (`finish_reason` set) when a stop string or max_tokens ended it here;
        a message the worker marked final still needs `finish()`.
        """
        generated = self._generated
        limit = self._limit
        room = limit - len(generated)
        new = list(ids) if len(ids) <= room else list(ids)[:room]
        add_one = self._add_one
        matcher = self._matcher
        try:
            if matcher is None:
                texts = [add_one(t) for t in new]
            else:
                texts = []
                for i, t in enumerate(new):
                    text, stopped = matcher.feed(add_one(t))
                    texts.append(text)
                    if stopped:
                        del new[i + 1 :]
                        generated.extend(new)
                        logprobs = self._logprobs(msg, len(new)) if self._want_logprobs else None
                        return StepOutput(new, texts, logprobs, "stop")
        except IndexError:
            raise EngineError(
                f"worker returned a token id outside the vocabulary: {list(msg.token_ids)}"
            ) from None
        generated.extend(new)
        logprobs = self._logprobs(msg, len(new)) if self._want_logprobs else None
        if len(generated) >= limit and not msg.finish_reason:
            # The worker should have stopped here itself; do not relay more than asked.
            return self.finish(msg, StepOutput(new, texts, logprobs), "length")
        return StepOutput(new, texts, logprobs)

    def finish(
        self,
        msg: worker_pb2.GenerateResponse,
        out: StepOutput | None = None,
        reason: str | None = None,
    ) -> StepOutput:
        """The final output: held-back text, the finish reason and (worker-ended) the usage.

        `reason` is given when the frontend ends the request itself; then the
        worker's counts do not describe what the client got, and none are taken.
        """
        if msg.finish_reason == worker_pb2.FINISH_REASON_ERROR:
            raise EngineError(f"engine error: {msg.error or 'unknown'}")
        if reason is None:
            reason = _FINISH_REASONS.get(msg.finish_reason, "stop")
            if msg.HasField("usage"):
                u = msg.usage
                # A worker counting whole cached blocks may say more than the prompt holds.
                self._job.usage = Usage(
                    u.prompt_tokens, u.completion_tokens, min(u.cached_tokens, u.prompt_tokens)
                )
        tail = self._detok.flush()
        matcher = self._matcher
        if matcher is not None:
            text, stopped = matcher.feed(tail)
            tail = text if stopped else text + matcher.flush()
            if stopped:
                reason = "stop"
        if out is None:
            out = StepOutput([], [], None)
        if tail:
            out.texts.append(tail)
        out.finish_reason = reason
        return out

    @staticmethod
    def _logprobs(msg: worker_pb2.GenerateResponse, count: int) -> list[TokenLogprob]:
        return [
            (lp.token_id, lp.logprob, [(t.token_id, t.logprob) for t in lp.top])
            for lp in msg.logprobs[:count]
        ]
