"""config_to_argv is parse_config's inverse: only changed fields, flags as add_arguments parses them."""

from __future__ import annotations

import dataclasses

import pytest
from tandem.runtime.config import config_to_argv, option, parse_config, secret_environ


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """A nested config: its fields are flat flags of the outer one."""

    max_items: int = option(8, "Most items.")
    ratio: float = option(0.5, "A ratio.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sample:
    """Every kind of field a service config has."""

    name: str = option("a", "A name.")
    count: int = option(1, "A count.")
    offset: int = option(0, "May be negative.")
    scale: float = option(1.0, "A float.")
    enabled: bool = option(True, "On unless --no-enabled.")
    verbose: bool = option(False, "Off unless --verbose.")
    tags: list[str] = option(default_factory=lambda: ["x"], help="Comma-separated.")
    limit: int | None = option(None, "Optional.")
    token: str = option("", "Filled in when empty.", flag="--the-token")
    limits: Limits = dataclasses.field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not self.token:
            object.__setattr__(self, "token", "generated")


@pytest.fixture(autouse=True)
def _no_tandem_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TANDEM_NAME", "TANDEM_COUNT", "TANDEM_TOKEN", "TANDEM_RATIO"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_give_no_flags() -> None:
    assert config_to_argv(Sample(), omit=("token",)) == []


def test_each_kind_of_field_round_trips() -> None:
    config = Sample(name="b c", count=3, offset=-2, scale=0.1 + 0.2, enabled=False,
                    verbose=True, tags=["p", "q"], limit=7, token="t1",
                    limits=Limits(max_items=2))  # fmt: skip
    argv = config_to_argv(config)
    assert "--no-enabled" in argv and "--verbose" in argv and "--offset=-2" in argv
    assert argv[argv.index("--scale") + 1] == repr(0.1 + 0.2)
    assert argv[argv.index("--the-token") + 1] == "t1"
    assert argv[argv.index("--max-items") + 1] == "2" and "--ratio" not in argv
    assert parse_config(Sample, argv) == config


def test_an_empty_list_is_passed_as_an_empty_value() -> None:
    config = Sample(tags=[])
    assert parse_config(Sample, config_to_argv(config, omit=("token",))).tags == []


def test_omitted_fields_are_never_passed() -> None:
    assert "--the-token" not in config_to_argv(Sample(token="t1", count=2), omit=("token",))


def test_values_no_flag_can_express_are_refused() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Nullable:
        limit: int | None = option(5, "Optional.")
        items: list[str] = option(default_factory=list, help="Comma-separated.")

    with pytest.raises(ValueError, match="back to None"):
        config_to_argv(Nullable(limit=None))
    with pytest.raises(ValueError, match="comma"):
        config_to_argv(Nullable(items=["a,b"]))


def test_a_value_the_childs_environment_would_override_is_passed() -> None:
    # The child inherits TANDEM_*: a default set here must still win over it there.
    environ = {"TANDEM_COUNT": "5", "TANDEM_NAME": "a"}
    argv = config_to_argv(Sample(count=1, name="a"), omit=("token",), environ=environ)
    assert argv == ["--count", "1"]
    assert parse_config(Sample, argv, environ=environ).count == 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class WithSecrets:
    """A config holding keys a child must not get on its command line."""

    name: str = option("a", "A name.")
    keys: list[str] = option(default_factory=list, help="Keys.", secret=True)


def test_secrets_travel_in_the_environment_never_on_argv_or_in_repr() -> None:
    config = WithSecrets(name="b", keys=["sk-one", "sk-two"])
    argv = config_to_argv(config, environ={})
    assert argv == ["--name", "b"]
    environ = secret_environ(config)
    assert environ == {"TANDEM_KEYS": "sk-one,sk-two"}
    assert parse_config(WithSecrets, argv, environ=environ) == config
    assert "sk-one" not in repr(config)
    with pytest.raises(ValueError) as error:
        secret_environ(WithSecrets(keys=["sk,one"]))
    assert "sk,one" not in str(error.value)  # an error message never shows a key
