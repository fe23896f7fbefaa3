"""Config: flags win over TANDEM_* environment, which wins over defaults; --help from the fields."""

from __future__ import annotations

import dataclasses

import pytest
from tandem.runtime.config import RuntimeConfig, option, parse_config, parse_known_config


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ServiceConfig(RuntimeConfig):
    """A service for the tests."""

    port: int = option(9000, "gRPC port.")
    ratio: float = option(1.0, "Speed-up ratio.")
    fast: bool = option(False, "Go fast.")
    tiers: list[str] = option(default_factory=lambda: ["hbm"], help="Storage tiers.")
    mode: str = option("kv", "Routing mode.", choices=("kv", "random"))

    def __post_init__(self) -> None:
        if self.port < 0:
            raise ValueError("port must be >= 0")


def test_defaults_env_and_flags_in_that_order() -> None:
    env = {"TANDEM_PORT": "7000", "TANDEM_FAST": "true", "TANDEM_TIERS": "hbm,host_dram"}
    assert parse_config(_ServiceConfig, [], environ={}).port == 9000
    from_env = parse_config(_ServiceConfig, [], environ=env)
    assert (from_env.port, from_env.fast, from_env.tiers) == (7000, True, ["hbm", "host_dram"])
    from_flags = parse_config(_ServiceConfig, ["--port", "1", "--no-fast"], environ=env)
    assert (from_flags.port, from_flags.fast) == (1, False)
    assert parse_config(_ServiceConfig, ["--namespace", "x"], environ={}).namespace == "x"


def test_bad_values_exit_with_a_usage_message(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--port", "abc"], ["--mode", "bogus"], ["--port", "-1"]):
        with pytest.raises(SystemExit) as exc:
            parse_config(_ServiceConfig, argv, environ={})
        assert exc.value.code == 2
        assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="TANDEM_RATIO"):
        parse_config(_ServiceConfig, [], environ={"TANDEM_RATIO": "fast"})


def test_help_lists_every_field_with_its_env_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(_ServiceConfig, ["--help"], prog="svc")
    text = capsys.readouterr().out
    for flag in (
        "--port",
        "--ratio",
        "--fast",
        "--tiers",
        "--mode",
        "--nats",
        "--etcd",
        "--namespace",
    ):
        assert flag in text
    assert "TANDEM_PORT" in text and "A service for the tests." in text


def test_unknown_flags_are_handed_back() -> None:
    config, rest = parse_known_config(
        _ServiceConfig, ["--port", "5", "--num-kv-blocks", "64"], environ={}
    )
    assert config.port == 5 and rest == ["--num-kv-blocks", "64"]


@dataclasses.dataclass(frozen=True)
class _Batching:
    """Shared by two services, each with its own defaults."""

    max_num_seqs: int = option(64, "Batch size.")
    prefix_caching: bool = option(True, "Reuse prefixes.")

    def __post_init__(self) -> None:
        if self.max_num_seqs <= 0:
            raise ValueError("max_num_seqs must be positive")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _BigService(RuntimeConfig):
    """A service that batches a lot."""

    port: int = option(9000, "gRPC port.")
    batching: _Batching = option(
        default_factory=lambda: _Batching(max_num_seqs=256), help="Batching."
    )


def test_nested_configs_are_flat_flags_with_the_outer_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    default = parse_config(_BigService, [], environ={})
    assert default.batching == _Batching(max_num_seqs=256, prefix_caching=True)
    from_env = parse_config(_BigService, [], environ={"TANDEM_MAX_NUM_SEQS": "8"})
    assert from_env.batching == _Batching(max_num_seqs=8)
    from_flags = parse_config(
        _BigService,
        ["--max-num-seqs", "3", "--no-prefix-caching"],
        environ={"TANDEM_MAX_NUM_SEQS": "8"},
    )
    assert from_flags.batching == _Batching(max_num_seqs=3, prefix_caching=False)
    # Only what was given changes; the rest keeps the outer default (256, not 64).
    assert parse_config(_BigService, ["--no-prefix-caching"], environ={}).batching == _Batching(
        max_num_seqs=256, prefix_caching=False
    )
    with pytest.raises(SystemExit):
        parse_config(_BigService, ["--max-num-seqs", "0"], environ={})
    capsys.readouterr()

    with pytest.raises(SystemExit):
        parse_config(_BigService, ["--help"], prog="svc")
    text = " ".join(capsys.readouterr().out.split())
    assert "--batching" not in text
    assert "--max-num-seqs MAX_NUM_SEQS Batch size. [env TANDEM_MAX_NUM_SEQS; default: 256]" in text
    assert "--prefix-caching, --no-prefix-caching" in text


def test_a_list_flag_adds_up_when_repeated() -> None:
    config = parse_config(_ServiceConfig, ["--tiers", "a,b", "--tiers", "c"], environ={})
    assert config.tiers == ["a", "b", "c"]
    # A flag still replaces the environment's list rather than adding to it.
    assert parse_config(_ServiceConfig, ["--tiers", "c"], environ={"TANDEM_TIERS": "a"}).tiers == [
        "c"
    ]
