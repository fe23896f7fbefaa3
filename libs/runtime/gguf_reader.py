"""Reading a GGUF file's metadata: the key/value header and its tokenizer tables.

A GGUF carries its tokenizer as metadata (`tokenizer.ggml.*`): for byte-level
BPE models ("gpt2") the vocabulary, the merges and the token types. Tensors
are not read here; the worker's model loader reads those.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Any

# GGUF value types (gguf spec) -> struct format of one scalar; 8 is string, 9 array.
_GGUF_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass(frozen=True, slots=True)
class GgufTokenizerData:
    """The tokenizer metadata of a GGUF file, as plain Python values."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_token_id: int | None
    eos_token_id: int | None
    add_bos_token: bool
    chat_template: str | None
    context_length: int | None


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """A GGUF file's key/value metadata (tensors are not read): strings, numbers and lists.

    Own parser rather than `gguf.GGUFReader`, which builds numpy views for every
    element and takes seconds on a 49k-token vocabulary.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _num_tensors, num_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        pos = 24

        def string() -> str:
            nonlocal pos
            (length,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + length
            return buf[pos - length : pos].decode("utf-8", errors="replace")

        def value(kind: int) -> Any:
            nonlocal pos
            if kind == _GGUF_STRING:
                return string()
            if kind == _GGUF_ARRAY:
                item_kind, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                fmt = _GGUF_SCALARS.get(item_kind)
                if fmt is None:
                    return [value(item_kind) for _ in range(count)]
                size = struct.calcsize(fmt) * count
                items = list(struct.unpack_from(f"<{count}{fmt}", buf, pos))
                pos += size
                return items
            fmt = _GGUF_SCALARS[kind]
            (item,) = struct.unpack_from("<" + fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return item

        metadata: dict[str, Any] = {}
        for _ in range(num_kv):
            key = string()
            (kind,) = struct.unpack_from("<I", buf, pos)
            pos += 4
            metadata[key] = value(kind)
        return metadata


def read_gguf_tokenizer(path: str) -> GgufTokenizerData:
    """The tokenizer metadata (`tokenizer.*`) of a GGUF file."""
    meta = read_gguf_metadata(path)
    arch = meta.get("general.architecture", "")
    return GgufTokenizerData(
        model=meta.get("tokenizer.ggml.model", ""),
        pre=meta.get("tokenizer.ggml.pre", ""),
        tokens=meta.get("tokenizer.ggml.tokens", []),
        token_types=meta.get("tokenizer.ggml.token_type", []),
        merges=meta.get("tokenizer.ggml.merges", []),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=meta.get("tokenizer.chat_template"),
        context_length=meta.get(f"{arch}.context_length"),
    )
