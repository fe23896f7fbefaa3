"""Stop strings: cut at the first occurrence, across pieces, never leaking a partial one."""

from __future__ import annotations

import random
import time
import tracemalloc

import pytest
from tandem.frontend.errors import InvalidRequestError
from tandem.frontend.stop_strings import MAX_STOP_CHARS, StopStringMatcher


def run(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopStringMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(matcher.flush())
    return "".join(out), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected", "stopped"),
    [
        (("END",), ["hello ", "world"], "hello world", False),
        (("END",), ["abcENDdef"], "abc", True),
        (("END",), ["ab", "cE", "N", "Dxyz"], "abc", True),
        (("END",), ["E", "N", "X"], "ENX", False),  # a false start is released
        (("END",), ["abcEN"], "abcEN", False),  # held back, then flushed at the end
        (("\n\n", "."), ["one\n", "two. three\n\n"], "one\ntwo", True),  # earliest wins
        (("aab",), ["a", "a", "a", "b"], "a", True),  # overlapping prefix
        (("🙂",), ["I am ", "🙂 ok"], "I am ", True),
        (("x",), ["x"], "", True),
    ],
)
def test_stop_strings(
    stops: tuple[str, ...], pieces: list[str], expected: str, stopped: bool
) -> None:
    assert run(stops, pieces) == (expected, stopped)


def test_no_partial_stop_string_is_ever_emitted() -> None:
    matcher = StopStringMatcher(("STOP",))
    emitted = [matcher.feed(piece)[0] for piece in ["xS", "T", "O"]]
    assert emitted == ["x", "", ""]
    assert matcher.feed("P!") == ("", True)


class NaiveMatcher:
    """The reference: every proper prefix of every stop string, tried longest first."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        prefixes = {s[:k] for s in stops for k in range(1, len(s))}
        self.prefixes = sorted(prefixes, key=len, reverse=True)
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i != -1]
        if hits:
            self.held = ""
            return buf[: min(hits)], True
        self.held = next((p for p in self.prefixes if buf.endswith(p)), "")
        return buf[: len(buf) - len(self.held)], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


def test_matches_the_naive_reference_on_random_cases() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        # A small alphabet makes overlapping prefixes and repeats common.
        alphabet = "ab" if rng.random() < 0.5 else "abc\n"
        stops = tuple(
            "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 7)))
            for _ in range(rng.randrange(1, 4))
        )
        pieces = [
            "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 5)))
            for _ in range(rng.randrange(1, 12))
        ]
        ours, naive = StopStringMatcher(stops), NaiveMatcher(stops)
        for piece in pieces:
            got = ours.feed(piece)
            assert got == naive.feed(piece), (stops, pieces)
            if got[1]:
                break
        else:
            assert ours.flush() == naive.flush(), (stops, pieces)


def test_a_long_stop_string_costs_linear_time_and_memory() -> None:
    # The worst case for holding back: the output keeps matching a 60k-character prefix.
    length = 60_000
    stop = "a" * (length - 1) + "b"
    tracemalloc.start()
    try:
        matcher = StopStringMatcher((stop,))
        built_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    started = time.monotonic()
    emitted = [matcher.feed("a") for _ in range(2 * length)]
    assert matcher.feed("b") == ("", True)
    elapsed = time.monotonic() - started
    # Every prefix (the old way) would be 1.8 GB and 1.8e9 characters compared per token.
    assert built_bytes < 2_000_000
    assert elapsed < 10.0
    assert "".join(text for text, _ in emitted) == "a" * (length + 1)


def test_stop_strings_over_the_cap_are_refused_naming_stop() -> None:
    StopStringMatcher(("x" * (MAX_STOP_CHARS - 1), "y"))  # exactly at the cap
    with pytest.raises(InvalidRequestError) as refused:
        StopStringMatcher(("x" * MAX_STOP_CHARS, "y"))
    assert refused.value.status == 400 and refused.value.param == "stop"
    assert str(MAX_STOP_CHARS) in refused.value.message
