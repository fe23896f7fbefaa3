"""Objects checked against the official `kubernetes` client's API models.

A rendered object (a plain dict in the API's JSON form) must validate as its
model (`V1Deployment`, `V1Service`, ...), with no field the model does not
know, none it requires missing, and every value of the type it declares, and
must come back unchanged when the model writes it out again: a snake_case key
the model would also take (`container_port`) is not what the API takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class InvalidObject(ValueError):
    """An object its Kubernetes API model refuses; the message names the object and the field."""


def model_class(api_version: str, kind: str) -> type[Any]:
    """The client's model class of `apiVersion`/`kind` (`apps/v1` `Deployment` -> V1Deployment)."""
    from kubernetes.client import models

    version = api_version.rsplit("/", 1)[-1]
    cls = getattr(models, version[:1].upper() + version[1:] + kind, None)
    if cls is None:
        raise InvalidObject(f"no API model for apiVersion {api_version!r} kind {kind!r}")
    return cls  # type: ignore[no-any-return]


def validate_object(obj: Mapping[str, Any]) -> Any:
    """The validated model instance of `obj`; `InvalidObject` saying what is wrong."""
    from pydantic import ValidationError

    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    name = (obj.get("metadata") or {}).get("name", "?")
    where = f"{kind or '?'} {name}"
    if not api_version or not kind:
        raise InvalidObject(f"{where}: apiVersion and kind are required")
    cls = model_class(api_version, kind)
    try:
        model = cls.model_validate(dict(obj))
    except ValidationError as exc:
        raise InvalidObject(f"{where}: {exc}") from None
    written = _without_nulls(model.to_dict(serialize=True))
    if written != _without_nulls(dict(obj)):
        raise InvalidObject(f"{where}: {_first_difference(dict(obj), written)}")
    return model


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _first_difference(given: Any, written: Any, path: str = "") -> str:
    if isinstance(given, Mapping) and isinstance(written, Mapping):
        for key in given:
            if key not in written:
                return f"field {path}{key} is not the API's name for it"
            if _without_nulls(given[key]) != written[key]:
                return _first_difference(given[key], written[key], f"{path}{key}.")
        extra = sorted(set(written) - set(given))
        return f"the model adds {path}{extra[0]}" if extra else f"{path or 'object'} differs"
    if isinstance(given, list) and isinstance(written, list) and len(given) == len(written):
        for i, (a, b) in enumerate(zip(given, written, strict=True)):
            if _without_nulls(a) != b:
                return _first_difference(a, b, f"{path.rstrip('.')}[{i}].")
    return f"{path.rstrip('.') or 'object'}: {given!r} is written back as {written!r}"
