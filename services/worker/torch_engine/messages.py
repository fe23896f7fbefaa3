"""What callers post to the torch engine thread's inbox."""

from __future__ import annotations

from dataclasses import dataclass

from .runner import TorchSequence


@dataclass(frozen=True, slots=True)
class AddSequence:
    """Schedule `seq` (or end it with "abort" if the engine is stopping)."""

    seq: TorchSequence


@dataclass(frozen=True, slots=True)
class AbortSequence:
    """End `seq` with "abort" and free its blocks: its caller has gone."""

    seq: TorchSequence


InboxMessage = AddSequence | AbortSequence
