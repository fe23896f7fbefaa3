"""The router's public API: what the frontend (in-process) and the router service call.

A router picks a worker for each request and tracks the request until its
stream ends. Policies are registered by name (`kv`, `round-robin`, `random`)
in `policies.py`; `RemoteRouter` (remote.py) offers the same API over gRPC.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RouteResult:
    """Where a request goes and what the router expects to be cached there.

    `overlap_blocks`: the prompt's leading blocks the worker holds in any of its KV tiers,
    i.e. need not compute (device hits, and blocks it copies back from host memory or disk).
    """

    instance_id: str
    endpoint: str
    overlap_blocks: int = 0
    prompt_blocks: int = 0


class NoWorkersError(Exception):
    """No worker serves the model (or every one is excluded). Maps to HTTP 503."""


class RouterBusyError(Exception):
    """Every worker is above the busy threshold and the wait queue is full. Maps to HTTP 503."""


class BaseRouter(abc.ABC):
    """Picks a worker per request; owns the per-worker active-load counts.

    Contract: every successful `route()` is followed by exactly one `free()`
    for that request_id (stream finished, errored, or client gone);
    `prefill_done()` is called when the first token arrives. Both are cheap,
    idempotent, and never raise for an unknown request_id.
    """

    async def start(self) -> None:
        """Begin following workers / events; idempotent."""

    async def stop(self) -> None:
        """Stop background work."""

    @abc.abstractmethod
    async def route(
        self,
        request_id: str,
        token_ids: list[int],
        *,
        exclude: Collection[str] = (),
        max_tokens: int = 0,
    ) -> RouteResult: ...

    def prefill_done(self, request_id: str) -> None:
        """The request's prompt is computed; its prefill tokens no longer load the worker."""

    def free(self, request_id: str) -> None:
        """The request's stream has ended; release everything counted for it."""
