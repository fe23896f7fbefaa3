"""A model's tokenizer, built from a GGUF file (or an HF directory).

For byte-level BPE GGUFs ("gpt2") we build a `tokenizers.Tokenizer` from the
file's vocabulary, merges and token types exactly as HF transformers does, so
ids match `AutoTokenizer.from_pretrained(dir, gguf_file=...)`. Every token id
also maps to the bytes it stands for, the table streaming detokenization uses.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from tandem.runtime.chat_template import ChatTemplate
from tandem.runtime.detokenizer import IncrementalDetokenizer
from tandem.runtime.gguf_reader import GgufTokenizerData, read_gguf_tokenizer
from tandem.runtime.piece_encoder import (
    PieceEncoder,
    TokenLimitExceeded,
    min_tokens,
    refusing_unencodable,
)
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

# GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# llama.cpp `tokenizer.ggml.pre` names whose split regex differs from GPT-2's.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _byte_level_backend(
    data: GgufTokenizerData,
) -> tuple[BackendTokenizer, list[bytes], frozenset[int]]:
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    unspell = {ch: b for b, ch in spelling.items()}
    vocab: dict[str, int] = {}
    token_bytes: list[bytes] = []
    for index, token in enumerate(data.tokens):
        if set(token) <= alphabet:
            vocab[token] = index
            token_bytes.append(bytes(unspell[ch] for ch in token))
        else:  # a token written in plain text (llama.cpp does this for some added tokens)
            vocab["".join(spelling[b] for b in token.encode("utf-8"))] = index
            token_bytes.append(token.encode("utf-8"))
    merges = [tuple(m.split(" ", 1)) for m in data.merges]
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))  # type: ignore[arg-type]
    split = _PRE_TOKENIZER_SPLITS.get(data.pre)
    if split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    types = data.token_types or [1] * len(data.tokens)
    special: list[AddedToken] = []
    special_ids: set[int] = set()
    user_defined: list[AddedToken] = []
    for index, (token, token_type) in enumerate(zip(data.tokens, types, strict=False)):
        if token_type == _TOKEN_TYPE_CONTROL and set(token) <= alphabet:
            special.append(AddedToken(token, normalized=False, special=True))
            special_ids.add(index)
        elif token_type == _TOKEN_TYPE_USER_DEFINED:
            user_defined.append(AddedToken(token, normalized=False, special=False))
    if special:
        backend.add_special_tokens(special)
    if user_defined:
        backend.add_tokens(user_defined)
    return backend, token_bytes, frozenset(special_ids)


def _is_plain_byte_level(backend: BackendTokenizer) -> bool:
    """Byte-level BPE with no normalizer: every token stands for exactly its own bytes."""
    spec = json.loads(backend.to_str())
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return (
        spec.get("normalizer") is None
        and (spec.get("model") or {}).get("type") == "BPE"
        and any(part.get("type") == "ByteLevel" for part in parts)
    )


class Tokenizer:
    """A model's tokenizer: encode/decode, the chat template, and per-token bytes for streaming."""

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        token_bytes: list[bytes] | None = None,
        special_ids: Iterable[int] = (),
        bos_token_id: int | None = None,
        eos_token_ids: Sequence[int] = (),
        add_bos_token: bool = False,
        chat_template: str | None = None,
        context_length: int | None = None,
        cache_pieces: bool = False,
    ) -> None:
        self.backend = backend
        self.special_ids = frozenset(special_ids)
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.add_bos_token = add_bos_token
        self.context_length = context_length
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        if token_bytes is None:
            token_bytes = [self._bytes_of(i) for i in range(self.vocab_size)]
        self._token_bytes = token_bytes
        # What a streamed token contributes to the text when special tokens are skipped.
        self._visible_bytes = [
            b"" if i in self.special_ids else b for i, b in enumerate(token_bytes)
        ]
        bos = self.id_to_token(bos_token_id) if bos_token_id is not None else ""
        eos = self.id_to_token(self.eos_token_ids[0]) if self.eos_token_ids else ""
        self.chat_template = (
            ChatTemplate(chat_template, bos_token=bos, eos_token=eos) if chat_template else None
        )
        self._pieces = PieceEncoder(backend, token_bytes) if cache_pieces else None
        # No token spans more bytes of text, where that bounds how few tokens a text can be.
        self._max_token_bytes: int | None = None
        if _is_plain_byte_level(backend):
            self._max_token_bytes = max(map(len, token_bytes), default=1) or 1

    @classmethod
    def from_gguf(cls, path: str, *, chat_template: str | None = None) -> Tokenizer:
        data = read_gguf_tokenizer(path)
        if data.model != "gpt2":
            raise ValueError(
                f"{path}: tokenizer model {data.model!r} is not supported (only 'gpt2' BPE)"
            )
        backend, token_bytes, special_ids = _byte_level_backend(data)
        return cls(
            backend,
            token_bytes=token_bytes,
            special_ids=special_ids,
            bos_token_id=data.bos_token_id,
            eos_token_ids=(data.eos_token_id,) if data.eos_token_id is not None else (),
            add_bos_token=data.add_bos_token,
            chat_template=chat_template or data.chat_template,
            context_length=data.context_length,
            # Our byte-level BPE: no normalizer, a known split regex (see piece_encoder.py).
            cache_pieces=True,
        )

    @classmethod
    def from_path(cls, path: str, *, chat_template: str | None = None) -> Tokenizer:
        """A GGUF file, or an HF model directory with tokenizer.json (+ tokenizer_config.json)."""
        if os.path.isdir(path):
            return cls._from_hf_dir(path, chat_template)
        return cls.from_gguf(path, chat_template=chat_template)

    @classmethod
    def _from_hf_dir(cls, path: str, chat_template: str | None) -> Tokenizer:
        backend = BackendTokenizer.from_file(os.path.join(path, "tokenizer.json"))
        config: dict[str, Any] = {}
        config_path = os.path.join(path, "tokenizer_config.json")
        if os.path.exists(config_path):
            with open(config_path) as f:
                config = json.load(f)
        special = [t.content for t in backend.get_added_tokens_decoder().values() if t.special]
        special_ids = [backend.token_to_id(t) for t in special]

        def token_id(name: str) -> int | None:
            value = config.get(name)
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if isinstance(value, str) else None

        eos = token_id("eos_token")
        return cls(
            backend,
            special_ids=[i for i in special_ids if i is not None],
            bos_token_id=token_id("bos_token"),
            eos_token_ids=(eos,) if eos is not None else (),
            add_bos_token=bool(config.get("add_bos_token", False)),
            chat_template=chat_template or config.get("chat_template"),
        )

    # -- encode / decode -------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token text (e.g. `<|im_start|>`) maps to its id.

        Raises `UnencodableTextError` (a ValueError) for text with a lone surrogate.
        """
        ids = self.encode_at_most(text, sys.maxsize)
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            if not ids or ids[0] != self.bos_token_id:
                ids.insert(0, self.bos_token_id)
        return ids

    def min_tokens(self, text: str) -> int:
        """How few tokens `text` can be at least (0 where the tokenizer gives no bound).

        Only byte-level BPE without a normalizer has a proven bound (each token is its own
        bytes of the text; nothing may shrink the text first): ours, or an HF one like it.
        """
        if self._max_token_bytes is None:
            return 0
        return min_tokens(len(text), self._max_token_bytes)

    def encode_at_most(self, text: str, max_tokens: int) -> list[int]:
        """Token ids of `text`, or `TokenLimitExceeded` as soon as they are known to be more
        than `max_tokens` (for our byte-level BPE long before the text is all tokenized).

        Long texts release the GIL while the backend works: call it in a thread.
        """
        at_least = self.min_tokens(text)
        if at_least > max_tokens:
            raise TokenLimitExceeded(at_least, max_tokens)
        with refusing_unencodable(text):
            if self._pieces is not None:
                return self._pieces.encode(text, max_tokens)
            [encoding] = self.backend.encode_batch_fast([text], add_special_tokens=False)
        if len(encoding.ids) > max_tokens:
            raise TokenLimitExceeded(len(encoding.ids), max_tokens)
        return encoding.ids

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        table = self._visible_bytes if skip_special_tokens else self._token_bytes
        return b"".join(table[i] for i in token_ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token `token_id` stands for (logprobs report these)."""
        return self._token_bytes[token_id]

    def id_to_token(self, token_id: int) -> str:
        return self.backend.id_to_token(token_id) or ""

    def is_valid_id(self, token_id: int) -> bool:
        return 0 <= token_id < len(self._token_bytes)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        if self.chat_template is None:
            raise ValueError("this model has no chat template")
        return self.chat_template.render(
            messages, add_generation_prompt=add_generation_prompt, **extra
        )

    def detokenizer(self, *, skip_special_tokens: bool = True) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(
            self._visible_bytes if skip_special_tokens else self._token_bytes
        )

    def _bytes_of(self, token_id: int) -> bytes:
        # Generic fallback (non byte-level models): what the decoder makes of the token alone.
        return self.backend.decode([token_id], skip_special_tokens=False).encode("utf-8")
