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
from collections.abc import Mapping, Sequence
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
) -> Any:
    """A config field with its one-line help text (and optional choices / flag name)."""
    metadata = {"help": help, "choices": choices, "flag": flag}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field: dataclasses.Field[Any]) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def env_name(field: dataclasses.Field[Any]) -> str:
    return ENV_PREFIX + field.name.upper()


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


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per field of dataclass `cls` to `parser`."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        annotation = hints[field.name]
        base = _base_type(annotation)
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else default
        help_text = f"{help_text} [env {env_name(field)}; default: {shown}]"
        kwargs: dict[str, Any] = {"dest": field.name, "help": help_text, "default": None}
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = lambda raw, a=annotation: _convert(raw, a)
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
            kwargs["metavar"] = field.name.upper()
        parser.add_argument(flag_name(field), **kwargs)


def config_from_namespace(
    cls: type[T], namespace: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> T:
    """Fill `cls` from parsed flags, then environment, then its defaults."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init:
            continue
        given = getattr(namespace, field.name, None)
        if given is not None:
            values[field.name] = given
        elif env_name(field) in environ:
            try:
                values[field.name] = _convert(environ[env_name(field)], hints[field.name])
            except ValueError as exc:
                raise SystemExit(f"invalid {env_name(field)}: {exc}") from None
    return cls(**values)


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
        "OpenTelemetry span exporter: none (trace context is still passed on) or console (JSON on stdout).",
        choices=("none", "console"),
    )
