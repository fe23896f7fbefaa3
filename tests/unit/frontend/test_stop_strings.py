"""Stop strings: cut at the first occurrence, across pieces, never leaking a partial one."""

from __future__ import annotations

import pytest
from tandem.frontend.stop_strings import StopStringMatcher


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
