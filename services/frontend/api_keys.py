"""API keys: the keys that open the API (flags, environment, a key file) and the one check."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from tandem.runtime.startup import StartupError


def check_key(key: str) -> None:
    """A key is a bearer token: not empty, no whitespace (the message never shows the key)."""
    if not key or any(char.isspace() for char in key):
        raise ValueError("an API key must be non-empty and contain no whitespace")


def _digest(key: str) -> bytes:
    # Comparing digests of equal length hides a key's length, which compare_digest leaks.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    """Owns the accepted keys (as digests) and the check of a request's Authorization header."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        for key in keys:
            check_key(key)
        self._digests = tuple(dict.fromkeys(_digest(key) for key in keys))

    @classmethod
    def load(cls, keys: Iterable[str], key_file: str) -> ApiKeys:
        """`keys` plus those of `key_file` (one per line; blank lines and # comments skipped)."""
        keys = list(keys)
        if key_file:
            keys.extend(_read_key_file(Path(key_file)))
        return cls(keys)

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, authorization: str | None) -> bool:
        """True if `authorization` is `Bearer <one of the keys>`.

        Compared in constant time against every key, with no early exit, so
        the time taken says nothing about which key came close.
        """
        scheme, _, token = (authorization or "").strip().partition(" ")
        digest = _digest(token.strip())
        matched = False
        for key in self._digests:
            matched |= hmac.compare_digest(key, digest)
        return matched and scheme.lower() == "bearer"


def _read_key_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read --api-key-file {path}: {exc}") from None
    keys = []
    for number, line in enumerate(lines, 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        try:
            check_key(key)
        except ValueError as exc:
            raise StartupError(f"--api-key-file {path}, line {number}: {exc}") from None
        keys.append(key)
    if not keys:
        raise StartupError(f"--api-key-file {path} holds no key")
    return keys
