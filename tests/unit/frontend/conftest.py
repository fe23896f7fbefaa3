"""Fixtures for frontend tests: the bundled tokenizer (fake workers: `servers` in tests/conftest.py)."""

from __future__ import annotations

import pytest
from tandem.runtime.model_card import default_model_path
from tandem.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(default_model_path())
