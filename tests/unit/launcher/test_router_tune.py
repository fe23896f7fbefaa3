"""`tandem router tune` and `tandem simulate`: the search never loses to where it started, and
the commands print their tables and refuse bad input with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tandem.launcher import cli
from tandem.launcher.fleet_config import FleetConfig
from tandem.launcher.mooncake_trace import TraceRecord
from tandem.launcher.router_tune import SEARCH_SPACE, knob_flags, tune
from tandem.router.config import RoutingConfig


def trace() -> list[TraceRecord]:
    """Bursts of requests in four prefix groups on two workers: load and hits compete."""
    return [
        TraceRecord(40.0 * i, 1500 + 13 * i, 3 + i % 5, (i % 4, 10 + i % 4, 100 + i))
        for i in range(24)
    ]


def test_tune_returns_the_best_setting_it_simulated_and_never_loses_to_the_defaults() -> None:
    config = FleetConfig(workers=2, block_tokens=64)
    found = tune(trace(), config, objective="ttft_mean", passes=1)

    assert found.start.routing == RoutingConfig()
    assert found.trials[0] is found.start
    assert found.best.score <= found.start.score
    assert found.best.score == min(t.score for t in found.trials)
    # Every value of every knob was tried from the best setting at its turn.
    for knob, values in SEARCH_SPACE.items():
        assert set(values) <= {getattr(t.routing, knob) for t in found.trials}


def test_knob_flags_are_the_frontends_flags() -> None:
    routing = RoutingConfig(
        kv_overlap_score_weight=2.0, router_temperature=0.05, busy_threshold=0.95
    )
    assert knob_flags(routing) == (
        "--kv-overlap-score-weight 2 --router-temperature 0.05 --busy-threshold 0.95"
    )


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    path = tmp_path / "trace.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "timestamp": r.timestamp_ms,
                    "input_length": r.input_length,
                    "output_length": r.output_length,
                    "hash_ids": list(r.hash_ids),
                }
            )
            + "\n"
            for r in trace()
        )  # fmt: skip
    )
    return path


def test_simulate_prints_the_replay_table(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["simulate", "--trace", str(trace_file), "--workers", "2", "--block-tokens", "64",
            "--router-mode", "round-robin", "--max-requests", "10"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("round-robin"))
    assert row.split()[1:4] == ["10", "10", "0"]
    assert "TTFT p50" in out and "cached" in out


def test_router_tune_prints_both_settings_and_the_flags(
    trace_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["router", "tune", "--trace", str(trace_file), "--workers", "2",
            "--block-tokens", "64", "--max-requests", "8", "--passes", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("flags: --kv-overlap-score-weight ")
    assert any(line.startswith("given") for line in out.splitlines())
    assert any(line.startswith("best") for line in out.splitlines())


def test_a_missing_or_malformed_trace_is_an_error_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["simulate", "--trace", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read --trace" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0}\n')
    assert cli.main(["router", "tune", "--trace", str(bad)]) == 2
    assert "not a Mooncake trace record" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["simulate"], "--trace is required"),
        (["simulate", "--trace", "t", "--workers", "0"], "workers must be positive"),
        (["router", "tune", "--trace", "t", "--router-mode", "random"], "--router-mode kv"),
    ],
)
def test_bad_flags_exit_with_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
