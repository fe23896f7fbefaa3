"""Typed reads of JSON request fields, each failure the OpenAI error for that field.

Wrong JSON types raise `InvalidTypeError` (422); values out of range raise
`InvalidRequestError` (400).
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidRequestError, InvalidTypeError, MalformedJsonError


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def wrong_type(param: str, expected: str, value: Any) -> InvalidTypeError:
    return InvalidTypeError(
        f"Invalid type for '{param}': expected {expected}, but got {type_name(value)} instead.",
        param=param,
    )


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or MalformedJsonError."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJsonError(
            f"We could not parse the JSON body of your request: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise MalformedJsonError(f"The request body must be a JSON object, not {type_name(body)}.")
    return body


class JsonFields:
    """Typed access to a request body's fields; each check raises that field's OpenAI error."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def get(self, name: str) -> Any:
        return self.body.get(name)

    def string(self, name: str, *, required: bool = False) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise InvalidTypeError(
                    f"Missing required parameter: '{name}'.",
                    param=name,
                    code="missing_required_parameter",
                )
            return None
        if not isinstance(value, str):
            raise wrong_type(name, "a string", value)
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise wrong_type(name, "a boolean", value)
        return value

    def integer(self, name: str, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self.body.get(name)
        if value is None:
            return None
        # 16.0 is an integer in JSON Schema; 16.5 and true are not.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong_type(name, "an integer", value)
        check_range(name, value, lo, hi)
        return value

    def number(self, name: str, lo: float | None = None, hi: float | None = None) -> float | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not is_number(value):
            raise wrong_type(name, "a number", value)
        value = float(value)
        if not math.isfinite(value):
            raise InvalidRequestError(f"'{name}' must be a finite number.", param=name)
        check_range(name, value, lo, hi)
        return value


def check_range(name: str, value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise InvalidRequestError(
            f"{value} is less than the minimum of {lo} - '{name}'", param=name, code="invalid_value"
        )
    if hi is not None and value > hi:
        raise InvalidRequestError(
            f"{value} is greater than the maximum of {hi} - '{name}'",
            param=name,
            code="invalid_value",
        )
