"""The `tandem` command: dispatch, usage errors, and how `tandem up` splits cores between torch workers."""

from __future__ import annotations

import os

import pytest
from tandem.runtime.cli import UpConfig, _with_thread_share, main


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
