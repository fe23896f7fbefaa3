"""A request body decoded into its declared type, every failure an OpenAI error.

msgspec decodes and validates in one pass; when that fails, this module says
why the way the OpenAI API does: wrong types and missing fields are
`InvalidTypeError` (422); values out of range, unknown fields and what the
server does not implement are 400s (`InvalidRequestError` and subclasses),
as is a string holding a lone UTF-16 surrogate (no UTF-8 text can); what is
not JSON at all (bad syntax, invalid UTF-8, nesting past the decoder's depth)
is `MalformedJsonError` (400). The translation needs the offending value, so
the error path decodes the body a second time, untyped; the path of a valid
request pays for nothing.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any, Generic, TypeVar

import msgspec

from .errors import (
    FrontendError,
    InvalidRequestError,
    InvalidTypeError,
    MalformedJsonError,
    UnsupportedParameterError,
)
from .request_types import CHOICES, UNSUPPORTED

T = TypeVar("T")

# Errors inside these fields name the field as `param`, as OpenAI does; the message keeps
# the exact place (`stop[1]`).
_WHOLE_FIELD_PARAMS = frozenset({"stop", "prompt"})
# What a union-typed field holds, in words (msgspec names only the JSON types).
_EXPECTED = {
    "stop": "a string or an array of strings",
    "prompt": "a string or an array of token ids",
    "prompt[]": "a token id (an integer)",
    "messages[].content": "a string or an array of content parts",
}
# msgspec's names of JSON types, and Python's, -> ours.
_JSON_TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}
_VALUE_TYPES = {
    type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string",
    list: "array", dict: "object",
}  # fmt: skip
_RANGE_MESSAGES = {
    ">=": "{value} is less than the minimum of {bound} - '{where}'",
    "<=": "{value} is greater than the maximum of {bound} - '{where}'",
    ">": "'{where}' must be greater than {bound}.",
    "<": "'{where}' must be less than {bound}.",
}
_TOO_DEEP = "The JSON body of your request is nested too deeply."
_MISSING = re.compile(r"Object missing required field `(?P<field>.+)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>.+)`")
# Without "got" where msgspec checks a tag (a message's `role`).
_WRONG_TYPE = re.compile(r"Expected `(?P<expected>[^`]+)`(?:, got `(?P<got>\w+)`)?")
_RANGE = re.compile(r"Expected `\w+` (?P<op>>=|<=|>|<) (?P<bound>\S+)")
_LENGTH = re.compile(r"Expected `(?P<kind>\w+)` of length (?P<op>>=|<=) (?P<bound>\d+)")
_ENUM = re.compile(r"Invalid (enum )?value")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONE_SURROGATE = "lone UTF-16 surrogate escape, which is not valid Unicode"


class BodyDecoder(Generic[T]):
    """Decodes JSON bodies into one declared type (its checks compiled once), or raises."""

    def __init__(self, body_type: type[T]) -> None:
        self.body_type = body_type
        self._decoder = msgspec.json.Decoder(body_type)

    def decode(self, raw: bytes) -> T:
        """`raw` as a `body_type`, or the OpenAI error for what is wrong with it."""
        try:
            try:
                return self._decoder.decode(raw)
            except msgspec.ValidationError as exc:
                return _decode_lenient(raw, self.body_type, exc)
        except msgspec.DecodeError as exc:
            raise _malformed(raw, str(exc)) from None
        except RecursionError:
            raise MalformedJsonError(_TOO_DEEP) from None


def _malformed(raw: bytes, reason: str) -> FrontendError:
    # msgspec calls a lone high surrogate "truncated"; Python's json lets lone surrogates
    # through, so when it reads the body, that was the fault: say which field holds it.
    if "truncated" in reason or "surrogate" in reason:
        with contextlib.suppress(ValueError, RecursionError):
            where = _surrogate_at(json.loads(raw))
            if where:
                return InvalidRequestError(
                    f"'{where}' holds a {_LONE_SURROGATE}.",
                    param=_param(where),
                    code="invalid_value",
                )
            reason = f"it holds a {_LONE_SURROGATE}"
    return MalformedJsonError(f"We could not parse the JSON body of your request: {reason}.")


def _surrogate_at(value: Any, where: str = "") -> str | None:
    """Where in `value` a string (or a key) holds a lone surrogate, as a `param` path."""
    if isinstance(value, str):
        return where if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):
                return where  # the object: a bad key cannot be written out
            if found := _surrogate_at(item, f"{where}.{key}" if where else key):
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _surrogate_at(item, f"{where}[{i}]"):
                return found
    return None


def _decode_lenient(raw: bytes, body_type: type[T], error: msgspec.ValidationError) -> T:
    """The body decoded untyped, to read the values `error` is about, or accept 16.0 as 16."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.ValidationError:  # a number no Python value holds (1e400)
        raise _translate(error, None) from None
    if not isinstance(body, dict):
        raise MalformedJsonError(
            f"The request body must be a JSON object, not {_VALUE_TYPES[type(body)]}."
        )
    # JSON Schema's integers include 16.0; msgspec's do not.
    body = _integral_floats_as_ints(body)
    try:
        return msgspec.convert(body, body_type)
    except msgspec.ValidationError as exc:
        raise _translate(exc, body) from None


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    return value


def _value_at(body: Any, path: str) -> Any:
    value = body
    for key, index in _SEGMENT.findall(path):
        try:
            value = value[key] if key else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _translate(exc: msgspec.ValidationError, body: Any) -> FrontendError:
    """msgspec's "what - at `$.path`" as the error OpenAI gives for it."""
    what, at, path = str(exc).rpartition(" - at `$")
    if at:
        path = path.removesuffix("`")
    else:
        what, path = path, ""
    if field := _MISSING.fullmatch(what) or _UNKNOWN.fullmatch(what):
        path = f"{path}.{field['field']}"
    # Inside a free-form object msgspec writes keys as "[...]": name the object.
    where = path.removeprefix(".").split("[...]", 1)[0]
    top = _top(where)
    param = _param(where)
    value = _value_at(body, path)
    generic = re.sub(r"\[\d+\]", "[]", where)
    for field_param, key in ((param, generic), (top, top)):  # the field, or a part of it
        if key in UNSUPPORTED:
            return UnsupportedParameterError(
                UNSUPPORTED[key].format(value=value), param=field_param
            )
    if _UNKNOWN.fullmatch(what):
        return UnsupportedParameterError(
            f"Unrecognized request argument supplied: {where}", param=param
        )
    wrong_type = _WRONG_TYPE.fullmatch(what)
    got = (wrong_type["got"] or _VALUE_TYPES[type(value)]) if wrong_type else None
    if _MISSING.fullmatch(what) or got == "null":
        return InvalidTypeError(
            f"Missing required parameter: '{where}'.",
            param=param,
            code="missing_required_parameter",
        )
    if wrong_type:
        names = [_JSON_TYPES.get(n, n) for n in wrong_type["expected"].split(" | ") if n != "null"]
        expected = _EXPECTED.get(generic) or " or ".join(
            f"{'an' if n[0] in 'aeiou' else 'a'} {n}" for n in names
        )
        return InvalidTypeError(
            f"Invalid type for '{where}': expected {expected}, but got {_JSON_TYPES.get(str(got), got)} instead.",
            param=param,
        )
    if bound := _RANGE.fullmatch(what):
        message = _RANGE_MESSAGES[bound["op"]].format(
            value=value, bound=bound["bound"], where=where
        )
        return InvalidRequestError(message, param=param, code="invalid_value")
    if length := _LENGTH.fullmatch(what):
        if length["op"] == ">=":  # every minimum length here is 1
            code = "empty_array" if length["kind"] == "array" else None
            return InvalidRequestError(f"'{where}' must not be empty.", param=param, code=code)
        items = "characters" if length["kind"] == "str" else "items"
        return InvalidRequestError(
            f"'{where}' may hold at most {length['bound']} {items}.", param=param
        )
    if _ENUM.match(what):
        choices = ", ".join(repr(c) for c in CHOICES.get(generic, ()))
        message = f"Invalid value: {value!r}." + (
            f" Supported values are: {choices}." * bool(choices)
        )
    elif "out of range" in what:  # 1e400, or an integer of 4,300 digits or more
        message = f"The number in '{where}' is out of range."
    else:
        message = f"Invalid value for '{where}': {what}."
    return InvalidRequestError(message, param=param, code="invalid_value")


def _top(where: str) -> str:
    return re.split(r"[.\[]", where, maxsplit=1)[0]


def _param(where: str) -> str:
    return _top(where) if _top(where) in _WHOLE_FIELD_PARAMS else where
