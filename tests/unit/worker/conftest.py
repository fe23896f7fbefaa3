"""Fixtures shared by the worker's unit tests."""

from __future__ import annotations

from typing import Any

import pytest
from tandem.worker import block_manager


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The token counts of every `hash_blocks` call the block manager makes, in order."""
    calls: list[int] = []
    real = block_manager.hash_blocks

    def counting(tokens: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(tokens))
        return real(tokens, *args, **kwargs)

    monkeypatch.setattr(block_manager, "hash_blocks", counting)
    return calls
