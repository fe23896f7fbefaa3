"""Stop strings: cut streamed text at the first stop sequence, never emitting part of one.

Text that could be the start of a stop sequence is held back until the next
piece shows whether it is one; an occurrence therefore never straddles text
already sent.
"""

from __future__ import annotations


class StopStringMatcher:
    """Owns the held-back tail of one request's output text."""

    __slots__ = ("_stops", "_prefixes", "_held")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        # Every proper prefix of every stop string, longest first: what may be held back.
        prefixes = {s[:k] for s in stops for k in range(1, len(s))}
        self._prefixes = sorted(prefixes, key=len, reverse=True)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that may be sent now, whether a stop string was hit). After a hit, stop feeding."""
        buf = self._held + text if self._held else text
        if not buf:
            return "", False
        cut = -1
        for stop in self._stops:
            index = buf.find(stop)
            if index != -1 and (cut == -1 or index < cut):
                cut = index
        if cut != -1:
            self._held = ""
            return buf[:cut], True
        for prefix in self._prefixes:
            if buf.endswith(prefix):
                self._held = prefix
                return buf[: len(buf) - len(prefix)], False
        self._held = ""
        return buf, False

    def flush(self) -> str:
        """The held-back tail, once the output is complete and no stop string can follow."""
        held, self._held = self._held, ""
        return held
