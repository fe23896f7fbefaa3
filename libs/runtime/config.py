"""Typed service configuration: flags, then `TANDEM_*` environment, then defaults.

Each service declares one frozen dataclass whose fields carry their help text
in `metadata` (use `option(...)`). `parse_config` builds the argparse parser
from it, so `--help` always matches the fields. Only entry points call it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
ENV_PREFIX = "TANDEM_"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    flag: str | None = None,
    default_factory: Any = dataclasses.MISSING,
    secret: bool = False,
    env_alias: str | None = None,
) -> Any:
    """A config field with its one-line help text (and optional choices / flag name).

    `env_alias` names a standard variable read when `TANDEM_<FIELD>` is not set
    (`OTEL_TRACES_EXPORTER` for the trace exporter).

    A `secret` field (an API key) is left out of the config's repr, so no log
    line shows it, and out of `config_to_argv`: a parent hands it to a child
    in the environment (`secret_environ`), since every user can read argv (`ps`).
    """
    metadata = {
        "help": help,
        "choices": choices,
        "flag": flag,
        "secret": secret,
        "env_alias": env_alias,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(
            default_factory=default_factory, metadata=metadata, repr=not secret
        )
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def flag_name(field: dataclasses.Field[Any]) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def env_name(field: dataclasses.Field[Any]) -> str:
    return ENV_PREFIX + field.name.upper()


def env_names(field: dataclasses.Field[Any]) -> tuple[str, ...]:
    """The variables `field` is read from, first found wins: `TANDEM_*`, then its alias."""
    alias = field.metadata.get("env_alias")
    return (env_name(field), alias) if alias else (env_name(field),)


def _env_value(field: dataclasses.Field[Any], environ: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, raw value) of the first of `env_names(field)` set in `environ`."""
    for name in env_names(field):
        if name in environ:
            return name, environ[name]
    return None


def _base_type(annotation: Any) -> Any:
    """`int | None` -> int, `list[str]` -> list, `Literal[...]` -> str."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        return list
    return annotation


def _convert(raw: str, annotation: Any) -> Any:
    base = _base_type(annotation)
    if base is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if base is list:
        return [item.strip() for item in raw.split(",") if item.strip()]
    return base(raw)


def _is_nested(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _field_default(field: dataclasses.Field[Any], missing: Any = None) -> Any:
    """The default declared on `field` (its factory called), else `missing`."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return missing


def flat_fields(
    cls: type[Any], defaults: Any = None
) -> list[tuple[dataclasses.Field[Any], Any, Any]]:
    """(field, type, default) of every settable field of `cls`, nested dataclasses flattened.

    A field whose type is itself a config dataclass contributes its own fields
    instead (so `--max-num-seqs` stays one flat flag); their defaults are the
    ones of the outer field's default value, so each outer class keeps its own.
    """
    hints = typing.get_type_hints(cls)
    flat: list[tuple[dataclasses.Field[Any], Any, Any]] = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        annotation = hints[field.name]
        default = _field_default(field) if defaults is None else getattr(defaults, field.name)
        if _is_nested(annotation):
            flat.extend(flat_fields(annotation, default))
        else:
            flat.append((field, annotation, default))
    return flat


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per field of dataclass `cls` (nested config dataclasses flattened) to `parser`."""
    for field, annotation, default in flat_fields(cls):
        base = _base_type(annotation)
        help_text = field.metadata.get("help", "")
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        help_text = f"{help_text} [env {' or '.join(env_names(field))}; default: {shown}]"
        kwargs: dict[str, Any] = {"dest": field.name, "help": help_text, "default": None}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if base is list:
                kwargs["action"] = "extend"  # repeated flags add up: --x a,b --x c is [a, b, c]
            kwargs["type"] = lambda raw, a=annotation: _convert(raw, a)
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
            kwargs["metavar"] = field.name.upper()
        parser.add_argument(flag_name(field), **kwargs)


def _given_values(
    cls: type[Any], namespace: argparse.Namespace, environ: Mapping[str, str], defaults: Any
) -> dict[str, Any]:
    """The fields of `cls` set by a flag or the environment; nested ones built on `defaults`."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        annotation = hints[field.name]
        if _is_nested(annotation):
            base = _field_default(field) if defaults is None else getattr(defaults, field.name)
            inner = _given_values(annotation, namespace, environ, base)
            if inner:
                values[field.name] = (
                    annotation(**inner) if base is None else dataclasses.replace(base, **inner)
                )
            continue
        given = getattr(namespace, field.name, None)
        from_env = None if given is not None else _env_value(field, environ)
        if given is not None:
            values[field.name] = given
        elif from_env is not None:
            name, raw = from_env
            try:
                values[field.name] = _convert(raw, annotation)
            except ValueError as exc:
                raise SystemExit(f"invalid {name}: {exc}") from None
            choices = field.metadata.get("choices")
            if choices and values[field.name] not in choices:
                raise SystemExit(
                    f"invalid {name}: {raw!r} is not one of {', '.join(map(str, choices))}"
                )
    return values


def config_from_namespace(
    cls: type[T], namespace: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> T:
    """Fill `cls` from parsed flags, then environment, then its defaults."""
    environ = os.environ if environ is None else environ
    return cls(**_given_values(cls, namespace, environ, None))


def config_from_env(
    cls: type[T], environ: Mapping[str, str] | None = None, /, **overrides: Any
) -> T:
    """`cls` as a process started with no flags builds it (`TANDEM_*` environment, then
    defaults), with `overrides` on top: the config a parent means to hand a child."""
    environ = os.environ if environ is None else environ
    return cls(**{**_given_values(cls, argparse.Namespace(), environ, None), **overrides})


def _parser(cls: type[Any], prog: str | None, description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or inspect.cleandoc(cls.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, cls)
    return parser


def _build(
    cls: type[T],
    parser: argparse.ArgumentParser,
    namespace: argparse.Namespace,
    environ: Mapping[str, str] | None,
) -> T:
    try:
        return config_from_namespace(cls, namespace, environ)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Parse `argv` into `cls`; invalid values exit with a usage message (never a traceback)."""
    parser = _parser(cls, prog, description)
    return _build(cls, parser, parser.parse_args(argv), environ)


def parse_known_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[T, list[str]]:
    """Like `parse_config`, but also returns the flags `cls` does not define (to pass on)."""
    parser = _parser(cls, prog, None)
    namespace, rest = parser.parse_known_args(argv)
    return _build(cls, parser, namespace, environ), rest


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """Settings every service shares; service configs extend this class."""

    namespace: str = option(
        "default", "Deployment namespace: keys, subjects and streams are scoped by it."
    )
    nats: str = option("nats://127.0.0.1:4222", "NATS server URL(s), comma-separated.")
    etcd: str = option("http://127.0.0.1:2379", "etcd endpoint(s), comma-separated.")
    log_level: str = option("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    otel_exporter: str = option(
        "none",
        "OpenTelemetry span exporter: none (trace context is still passed on), console (JSON "
        "on stdout) or otlp (to OTEL_EXPORTER_OTLP_ENDPOINT over OTEL_EXPORTER_OTLP_PROTOCOL, "
        "grpc by default or http/protobuf; service name OTEL_SERVICE_NAME).",
        choices=("none", "console", "otlp"),
        env_alias="OTEL_TRACES_EXPORTER",
    )


def config_to_argv(
    config: Any, *, omit: Collection[str] = (), environ: Mapping[str, str] | None = None
) -> list[str]:
    """The flags that make `parse_config(type(config), argv, environ=environ)` return `config`.

    A field is passed only when the child would not arrive at its value by
    itself, i.e. when it differs from what the child's `environ` (default: this
    process's environment, which children inherit) or else the field's declared
    default gives; so a child keeps its own defaults and `TANDEM_*` settings for
    everything else, and a flag given here still wins over the environment
    there. Fields of a nested config dataclass become flat flags. `omit` names
    fields never passed, such as a value each process draws for itself (a
    worker's random instance id, which its `__post_init__` fills in). Secret
    fields are never passed: `secret_environ` gives them as environment.
    """
    environ = os.environ if environ is None else environ
    argv: list[str] = []
    _append_flags(argv, config, None, omit, environ)
    return argv


def _append_flags(
    argv: list[str],
    config: Any,
    defaults: Any,
    omit: Collection[str],
    environ: Mapping[str, str],
) -> None:
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        if not field.init or field.name in omit or field.metadata.get("secret"):
            continue
        value = getattr(config, field.name)
        if defaults is None:
            default = _field_default(field, dataclasses.MISSING)
        else:
            default = getattr(defaults, field.name)
        if _is_nested(hints[field.name]):
            _append_flags(argv, value, None if default is dataclasses.MISSING else default, omit,
                          environ)  # fmt: skip
        elif value != _child_value(field, hints[field.name], default, environ):
            argv.extend(_flag_tokens(field, value))


def _child_value(
    field: dataclasses.Field[Any], annotation: Any, default: Any, environ: Mapping[str, str]
) -> Any:
    """What a child given no flag for `field` would take: its environment, else the default."""
    from_env = _env_value(field, environ)
    if from_env is None:
        return default
    raw = from_env[1]
    try:
        return _convert(raw, annotation)
    except ValueError:
        return dataclasses.MISSING  # the child would refuse it: pass the flag


def secret_environ(config: Any) -> dict[str, str]:
    """The secret fields of `config` as the `TANDEM_*` environment a child parses them from.

    With `config_to_argv`'s flags, a child started with this environment
    builds `config` again, and no secret is on its command line.
    """
    return {
        env_name(field): _text(flag_name(field), value)
        for field, _, value in flat_fields(type(config), config)
        if field.metadata.get("secret")
    }


def _flag_tokens(field: dataclasses.Field[Any], value: Any) -> list[str]:
    """One field as `add_arguments` parses it: --x / --no-x for bools, "a,b" for lists."""
    flag = flag_name(field)
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag.removeprefix("--")]
    text = _text(flag, value)
    # "--flag=-1" rather than "--flag -1": argparse would take "-1" for a flag.
    return [f"{flag}={text}"] if text.startswith("-") else [flag, text]


def _text(flag: str, value: Any) -> str:
    """A value as `_convert` reads it back: "a,b" for lists, floats exact."""
    if value is None:
        raise ValueError(f"{flag}: no flag sets a field back to None")
    if isinstance(value, list | tuple):
        items = [str(item) for item in value]
        if any("," in item for item in items):
            raise ValueError(f"{flag}: a list item contains a comma")
        return ",".join(items)
    if isinstance(value, float):
        return repr(value)  # exact: float(repr(x)) == x
    return str(value)
