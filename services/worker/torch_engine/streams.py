"""Outputs crossing from the engine thread to each caller's event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tandem.worker.engine import EngineOutput, FinishReason, TokenLogprob
from tandem.worker.sequence import Sequence


@dataclass(slots=True)
class Stream:
    """Where a sequence's outputs go: its caller's loop and queue."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[EngineOutput]


Outbox = list[tuple[Stream, EngineOutput]]


def make_output(
    seq: Sequence,
    token: int | None,
    logprob: TokenLogprob | None,
    finish: FinishReason | None,
    error: str | None = None,
) -> EngineOutput:
    """One step's output for `seq`; the last one carries usage (migrated tokens count as output)."""
    out = EngineOutput(token_ids=[] if token is None else [token], finish_reason=finish)
    if logprob is not None:
        out.logprobs = [logprob]
    if finish is not None:
        out.error = error
        out.usage = seq.usage()
    return out


def deliver(outbox: Outbox) -> None:
    """Hand a step's outputs over: one call_soon_threadsafe per event loop, not per token."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[EngineOutput], EngineOutput]]]
    by_loop = {}
    for stream, out in outbox:
        by_loop.setdefault(stream.loop, []).append((stream.queue, out))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the caller's loop is closed: nobody is listening
            pass


def _put_all(items: list[tuple[asyncio.Queue[EngineOutput], EngineOutput]]) -> None:
    for queue, out in items:
        queue.put_nowait(out)
