"""`tandem profile`'s flags: lists of lengths parse into a sweep plan, bad ones are one clear line."""

from __future__ import annotations

import pytest
from tandem.launcher.profile_command import ProfileConfig, profile_main


def test_lists_become_a_sorted_plan_with_the_worker_flags_recorded() -> None:
    config = ProfileConfig(batch_sizes=["16", "1", "4", "4"], decode_tokens=8)
    plan = config.plan(["--speedup-ratio", "2"])
    assert tuple(plan.batch_sizes) == (1, 4, 16)
    assert plan.settings["worker_args"] == ["--speedup-ratio", "2"]
    assert plan.decode_tokens == 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch-sizes", "1,x"], "--batch-sizes takes comma-separated integers"),
        (["--input-lengths", "0,4"], "--input-lengths needs positive integers"),
        (["--decode-tokens", "2"], "--decode-tokens must be at least 4"),
    ],
)
def test_bad_flags_are_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        profile_main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_worker_flags_with_an_endpoint_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert profile_main(["--endpoint", "h:1", "--speedup-ratio", "2"]) == 2
    assert "unknown flags --speedup-ratio 2" in capsys.readouterr().err
