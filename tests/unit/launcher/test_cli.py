"""The `tandem` command: dispatch, usage errors, and how `tandem up` splits cores between torch workers."""

from __future__ import annotations

import os

import pytest
from tandem.launcher.cli import main
from tandem.launcher.up import UpConfig, _with_thread_share
from tandem.runtime.config import config_to_argv


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "tandem up" not in capsys.readouterr().err


def test_torch_workers_split_the_cores_unless_told() -> None:
    cores = len(os.sched_getaffinity(0))
    assert _with_thread_share(UpConfig(workers=2), []) == ["--num-threads", str(max(1, cores // 2))]
    assert _with_thread_share(UpConfig(workers=2), ["--num-threads", "3"]) == ["--num-threads", "3"]
    assert _with_thread_share(UpConfig(workers=2, engine="mocker"), []) == []


def test_with_the_planner_torch_workers_split_the_cores_by_max_workers() -> None:
    cores = len(os.sched_getaffinity(0))
    config = UpConfig(workers=1, planner=True, max_workers=4)
    assert _with_thread_share(config, []) == ["--num-threads", str(max(1, cores // 4))]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--planner", "--workers", "5", "--max-workers", "4"], "--workers (5) must be within"),
        (
            ["--planner", "--min-workers", "3", "--workers", "3", "--max-workers", "2"],
            "must be within",
        ),
        (
            ["--planner", "--planner-scale-up-kv-usage", "2"],
            "planner: --scale-up-kv-usage must be in (0, 1]",
        ),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_up_rejects_bad_pool_flags(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["up", *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_up_passes_planner_flags_on() -> None:
    config = UpConfig(planner=True, workers=1, max_workers=3, planner_adjustment_interval=2.5)
    args = config_to_argv(config.planner_config("m"))
    assert args[:2] == ["--model", "m"]
    assert args[args.index("--max-workers") + 1] == "3"
    assert args[args.index("--adjustment-interval") + 1] == "2.5"
