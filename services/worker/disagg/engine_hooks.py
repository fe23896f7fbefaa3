"""What an engine offers the control plane to serve disaggregated (the mocker implements it).

Decode side: `submit_parked` admits a request with all its blocks allocated
and holds it out of scheduling until `resume_parked` says the KV arrived (with
the first token) or that it must be prefilled here after all. Prefill side:
`prefill_only` computes a prompt's KV and first token and keeps the blocks
pinned until the caller releases them (after the transfer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..engine import EngineRequest, OutputListener, TokenLogprob
from ..kv_transfer.transport import BaseKvTransport


@dataclass(slots=True, eq=False)
class ParkedRequest:
    """A decode-side request whose blocks are allocated and whose KV is awaited."""

    request_id: str
    num_cached_tokens: int  # leading prompt tokens already held here (whole blocks)
    dst_block_ids: list[int]  # the blocks that receive the rest, in prompt order
    handle: Any = field(repr=False)  # the engine's own sequence object


@dataclass(slots=True, eq=False)
class PrefillResult:
    """A prefill-only run: the first token and the pinned source blocks of the whole prompt."""

    first_token: int
    logprob: TokenLogprob | None
    block_ids: list[int]
    release: Callable[[], None]  # unpin the blocks (they stay in the prefix cache)


@runtime_checkable
class DisaggEngine(Protocol):
    def submit_parked(
        self, request: EngineRequest, listener: OutputListener
    ) -> tuple[Callable[[], None], ParkedRequest | None]:
        """Admit `request` parked; returns its abort and the parked request, or None when it
        could not be parked (no blocks now; nothing left to compute) and runs locally."""
        ...

    def resume_parked(
        self, parked: ParkedRequest, first_token: int | None, logprob: TokenLogprob | None
    ) -> bool:
        """The KV arrived (`first_token` given): decode on; None: prefill it here.
        False when the request is no longer parked (it ended, or was resumed already)."""
        ...

    async def prefill_only(self, request: EngineRequest) -> PrefillResult:
        """Compute the prompt's KV and first token; raises EngineError when it cannot."""
        ...

    def kv_transport(self) -> BaseKvTransport:
        """How this engine's blocks reach a peer (the mocker's: simulated)."""
        ...
