"""Incremental detokenization while streaming: token ids in, text pieces out.

Works on bytes: every token id maps to the bytes it stands for (a table the
`Tokenizer` builds once), so a step is a list lookup and an incremental UTF-8
decode that holds back a character split across tokens.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces; never splits a UTF-8 character.

    Bytes of a character cut across tokens wait in the decoder until the
    character is complete, so no replacement character appears mid-stream;
    `flush()` at the end renders any incomplete tail as U+FFFD.
    """

    __slots__ = ("_table", "_decoder")

    def __init__(self, table: list[bytes]) -> None:
        self._table = table
        self._decoder = _Utf8Decoder(errors="replace")

    def add(self, token_ids: Iterable[int]) -> str:
        """The text the new tokens complete (possibly "")."""
        table = self._table
        return self._decoder.decode(b"".join([table[i] for i in token_ids]))

    def add_one(self, token_id: int) -> str:
        return self._decoder.decode(self._table[token_id])

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
