"""Byte-level BPE encoding piece by piece: between added tokens, long pieces in chunks at word ends.

Exactness. Our GGUF tokenizers (no normalizer; GPT-2's or Llama 3's split regex, then
byte-level BPE) match added tokens (`<|im_start|>`, ...) first and encode the text between
them independently, and BPE merges never cross a pre-token (one match of the split regex).
So a text's ids are its pieces' ids in order, and a piece's ids are its chunks' ids in order
when each chunk boundary is one the regex makes in the whole piece and makes the same way in
the chunk. The boundary right after an ASCII letter or digit that an ASCII character other
than a letter or digit follows is such a boundary for both regexes: no alternative matches
a letter (digit) and then a non-letter (non-digit), none looks behind, and the one
lookahead (`\\s+(?!\\S)`) ends whitespace runs, which such a boundary does not.
Tests compare chunked ids with the backend's on whole texts.

Cost. Chunks go through `encode_batch_fast`, which releases the GIL (`encode` holds it) and
skips offsets, so a long prompt tokenized in a thread leaves the event loop free; the work stops
as soon as the ids so far plus a lower bound for the rest exceed the limit. The bound: a token
spans at most `max_token_bytes` bytes and a character at least one byte. An unbroken run
(no boundary: one letter, digit or symbol repeated) must be encoded whole, so before that
it gets a tighter bound: its tokens can only be those made of bytes the run holds.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from collections.abc import Iterator

from tokenizers import Tokenizer as BackendTokenizer

_SURROGATE = re.compile("[\ud800-\udfff]")
# The last character of a chunk: an ASCII letter or digit before an ASCII character that is
# neither (see the module docstring).
_WORD_END = re.compile(r"[A-Za-z0-9](?=[\x00-/:-@\[-`{-\x7f])")


class TokenLimitExceeded(Exception):
    """A text has more tokens than allowed; it has at least `at_least`, more than `limit`."""

    def __init__(self, at_least: int, limit: int) -> None:
        super().__init__(f"at least {at_least} tokens, more than {limit}")
        self.at_least = at_least
        self.limit = limit


class UnencodableTextError(ValueError):
    """Text that no tokenizer takes: it holds a lone surrogate, which UTF-8 cannot encode."""


@contextlib.contextmanager
def refusing_unencodable(text: str) -> Iterator[None]:
    """Turn the backend's TypeError on a lone surrogate in `text` into `UnencodableTextError`."""
    try:
        yield
    except TypeError:
        found = _SURROGATE.search(text)
        if found is None:
            raise
        raise UnencodableTextError(
            f"The text holds a lone surrogate (U+{ord(found.group()):04X}), "
            "which is not valid Unicode."
        ) from None


def min_tokens(num_chars: int, max_token_bytes: int) -> int:
    """The fewest tokens `num_chars` characters can be, when no token spans more bytes."""
    return -(-num_chars // max_token_bytes)


class PieceEncoder:
    """Owns the encoding of text piece by piece and the recently seen pieces' ids.

    Chat prompts repeat most pieces between requests (system prompt, role
    headers); only the new message is encoded afresh.
    """

    __slots__ = (
        "_backend",
        "_token_bytes",
        "max_token_bytes",
        "_split",
        "_added",
        "_cache",
        "_lock",
        "_longest_by_bytes",
    )

    MAX_PIECES = 1024
    MAX_PIECE_CHARS = 4096
    CHUNK_CHARS = 32_768

    def __init__(self, backend: BackendTokenizer, token_bytes: list[bytes]) -> None:
        self._backend = backend
        self._token_bytes = token_bytes
        # No token spans more bytes: bounds how few tokens a text can be.
        self.max_token_bytes = max(map(len, token_bytes), default=1) or 1
        self._added = {t.content: i for i, t in backend.get_added_tokens_decoder().items()}
        # Longest first: at one position the longest added token wins, as in the backend.
        alternatives = sorted(self._added, key=len, reverse=True)
        pattern = "(" + "|".join(map(re.escape, alternatives)) + ")" if alternatives else "(?!)"
        self._split = re.compile(pattern).split
        self._cache: dict[str, list[int]] = {}
        # Long prompts are encoded in a thread: writers must not interleave.
        self._lock = threading.Lock()
        # (length, mask of the bytes used), longest first; built at the first unbroken run.
        self._longest_by_bytes: list[tuple[int, int]] | None = None

    def encode(self, text: str, max_tokens: int = sys.maxsize) -> list[int]:
        """The ids of `text`; `TokenLimitExceeded` once they are known to be over `max_tokens`."""
        ids: list[int] = []
        left = len(text)  # characters not encoded yet
        # re.split with one group alternates: text, added token, text, ..., text.
        for i, piece in enumerate(self._split(text)):
            if i & 1:
                ids.append(self._added[piece])
            elif len(piece) > self.MAX_PIECE_CHARS:
                self._encode_long(piece, ids, left, max_tokens)
            elif piece:
                ids.extend(self._encode_short(piece))
            left -= len(piece)
            if len(ids) > max_tokens:
                raise TokenLimitExceeded(
                    len(ids) + min_tokens(left, self.max_token_bytes), max_tokens
                )
        return ids

    def _encode_short(self, piece: str) -> list[int]:
        piece_ids = self._cache.get(piece)
        if piece_ids is None:
            piece_ids = self._backend.encode(piece, add_special_tokens=False).ids
            with self._lock:
                if len(self._cache) >= self.MAX_PIECES:
                    del self._cache[next(iter(self._cache))]  # oldest first
                self._cache[piece] = piece_ids
        return piece_ids

    def _encode_long(self, piece: str, ids: list[int], left: int, max_tokens: int) -> None:
        """Append `piece`'s ids chunk by chunk; `left` counts the characters from its start on."""
        start, end = 0, len(piece)
        while start < end:
            at_least = len(ids) + min_tokens(left - start, self.max_token_bytes)
            if at_least > max_tokens:
                raise TokenLimitExceeded(at_least, max_tokens)
            stop = _chunk_end(piece, start + self.CHUNK_CHARS, self.CHUNK_CHARS)
            chunk = piece[start:stop]
            if len(chunk) > 2 * self.CHUNK_CHARS:  # an unbroken run: it is encoded whole
                rest = min_tokens(left - stop, self.max_token_bytes)
                at_least = len(ids) + self._fewest_tokens(chunk) + rest
                if at_least > max_tokens:
                    raise TokenLimitExceeded(at_least, max_tokens)
            [encoding] = self._backend.encode_batch_fast([chunk], add_special_tokens=False)
            ids.extend(encoding.ids)
            start = stop

    def _fewest_tokens(self, chunk: str) -> int:
        """How few tokens `chunk` (exact on its own) can be: its tokens use only its bytes."""
        data = chunk.encode("utf-8", "surrogatepass")
        step = self.CHUNK_CHARS  # a window at a time: `set()` over megabytes holds the GIL
        present = 0
        for i in range(0, len(data), step):
            present |= _byte_mask(data[i : i + step])
        if self._longest_by_bytes is None:
            longest: dict[int, int] = {}
            for token in filter(None, self._token_bytes):  # an empty token spans nothing
                mask = _byte_mask(token)
                longest[mask] = max(longest.get(mask, 0), len(token))
            self._longest_by_bytes = sorted(((n, m) for m, n in longest.items()), reverse=True)
        usable = next((n for n, mask in self._longest_by_bytes if not mask & ~present), 1)
        return min_tokens(len(data), usable)


def _byte_mask(data: bytes) -> int:
    """The set of byte values in `data`, as bits of an int."""
    mask = 0
    for byte in set(data):
        mask |= 1 << byte
    return mask


def _chunk_end(piece: str, at_least: int, window: int) -> int:
    """The first safe chunk boundary at or after `at_least` (the piece's end if none).

    Searched `window` characters at a time: one regex call holds the GIL, and one over
    megabytes without a boundary would hold it for seconds.
    """
    pos = at_least - 1
    while pos < len(piece) - 1:
        # One character past the window, for the lookahead of a match at its end.
        found = _WORD_END.search(piece, pos, pos + window + 1)
        if found is not None:
            return found.end()
        pos += window
    return len(piece)
