"""Stop strings: cut streamed text at the first stop sequence, never emitting part of one.

Text that could be the start of a stop sequence is held back until the next
piece shows whether it is one; an occurrence therefore never straddles text
already sent.

Each stop string runs its own Knuth-Morris-Pratt automaton: its state is the
length of the longest suffix of the output that is a prefix of that string,
so the held-back text is the longest such suffix over all stop strings and
is never stored (it is a prefix of the string that holds it). Building costs
time and memory linear in the strings' total length, and each output
character a constant amortized number of steps per stop string, however
long the strings are.
"""

from __future__ import annotations

from array import array

from .errors import InvalidRequestError

# Generous for real use (stop strings are words and markers), small enough that one
# request's automata stay a few hundred kilobytes and build in milliseconds.
MAX_STOP_CHARS = 65_536


def check_stop_strings(stops: tuple[str, ...]) -> None:
    """Refuse stop strings whose total length exceeds `MAX_STOP_CHARS` (400 naming `stop`)."""
    total = sum(map(len, stops))
    if total > MAX_STOP_CHARS:
        raise InvalidRequestError(
            f"'stop' sequences may hold at most {MAX_STOP_CHARS} characters in all; "
            f"these hold {total}.",
            param="stop",
            code="invalid_value",
        )


def _failure(stop: str) -> array[int]:
    """KMP failure function: `fail[i]` is the longest proper border of `stop[: i + 1]`."""
    fail = array("i", bytes(4 * len(stop)))
    k = 0
    for i in range(1, len(stop)):
        ch = stop[i]
        while k and stop[k] != ch:
            k = fail[k - 1]
        if stop[k] == ch:
            k += 1
        fail[i] = k
    return fail


class StopStringMatcher:
    """Owns one request's stop-string automata and the length of its held-back tail."""

    __slots__ = ("_stops", "_fails", "_states", "_held", "_held_in")

    def __init__(self, stops: tuple[str, ...]) -> None:
        check_stop_strings(stops)
        # An empty stop string is refused when the request is parsed; it would match nothing here.
        stops = tuple(s for s in stops if s)
        self._stops = stops
        self._fails = [_failure(s) for s in stops]
        # Per stop string: the longest suffix of the output that is a prefix of it.
        self._states = [0] * len(stops)
        # The held-back tail: its length (the largest state) and a stop string it prefixes.
        self._held = 0
        self._held_in = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that may be sent now, whether a stop string was hit). After a hit, stop feeding."""
        held = self._held
        states = self._states
        # Earliest start of a completed stop string, counted from the start of the held tail.
        cut = -1
        for i, stop in enumerate(self._stops):
            end = _advance(stop, self._fails[i], states, i, text)
            if end >= 0:
                start = held + end + 1 - len(stop)
                if cut == -1 or start < cut:
                    cut = start
        if cut != -1:
            out = self._release(cut, text)
            self._reset()
            return out, True
        new_held = max(states, default=0)
        out = self._release(held + len(text) - new_held, text)
        self._held = new_held
        if new_held:
            self._held_in = self._stops[states.index(new_held)]
        return out, False

    def flush(self) -> str:
        """The held-back tail, once the output is complete and no stop string can follow."""
        held = self._held_in[: self._held]
        self._reset()
        return held

    def _release(self, count: int, text: str) -> str:
        """The first `count` characters of the held tail followed by `text`."""
        held = self._held
        if count <= held:
            return self._held_in[:count]
        return self._held_in[:held] + text[: count - held]

    def _reset(self) -> None:
        self._states = [0] * len(self._stops)
        self._held = 0
        self._held_in = ""


def _advance(stop: str, fail: array[int], states: list[int], i: int, text: str) -> int:
    """Run stop string `i`'s automaton over `text`: the index where it first completes, or -1."""
    k = states[i]
    first = stop[0]
    n = len(text)
    pos = 0
    if not k:
        # Nothing pending: skip to where the string could begin (the common case, in C).
        pos = text.find(first)
        if pos < 0:
            return -1
    m = len(stop)
    while pos < n:
        ch = text[pos]
        while k and stop[k] != ch:
            k = fail[k - 1]
        if stop[k] == ch:
            k += 1
            if k == m:
                return pos
        else:
            pos = text.find(first, pos + 1)
            if pos < 0:
                break
            continue
        pos += 1
    states[i] = k
    return -1
