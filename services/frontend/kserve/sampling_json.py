"""The vLLM backend's `sampling_parameters` input: generation controls as one JSON object.

Triton's vLLM model takes its controls as a JSON string (values often strings
themselves: `{"temperature": "0.1", "max_tokens": "64"}`); here each known key
becomes the value of the input tensor that means the same, so one set of
checks (`llm_request.py`) applies to both ways of sending it. A key we do not
implement is refused, not ignored: it would change the answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequestError

SAMPLING_PARAMETERS = "sampling_parameters"


def _number(kind: type[int] | type[float]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("a boolean")
        number = kind(value)
        if kind is int and isinstance(value, float) and value != number:
            raise ValueError("not whole")
        return number

    return convert


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("not a boolean")


def _top_k(value: Any) -> int:
    top_k = _number(int)(value)
    return 0 if top_k == -1 else top_k  # vLLM's "off"


def _stop(value: Any) -> list[bytes]:
    words = [value] if isinstance(value, str) else value
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ValueError("not a string or a list of strings")
    return [w.encode() for w in words]


# key -> (the input tensor it stands for, its conversion to that tensor's elements)
_KEYS: dict[str, tuple[str, Callable[[Any], list[Any]]]] = {
    "max_tokens": ("max_tokens", lambda v: [_number(int)(v)]),
    "temperature": ("temperature", lambda v: [_number(float)(v)]),
    "top_p": ("top_p", lambda v: [_number(float)(v)]),
    "top_k": ("top_k", lambda v: [_top_k(v)]),
    "seed": ("random_seed", lambda v: [_number(int)(v)]),
    "stop": ("stop_words", _stop),
    "ignore_eos": ("ignore_eos", lambda v: [_boolean(v)]),
}


def sampling_values(raw: bytes) -> dict[str, list[Any]]:
    """The input tensors (name -> elements) that the JSON object `raw` stands for."""
    try:
        parameters = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequestError(
            f"'{SAMPLING_PARAMETERS}' must be a JSON object", param=SAMPLING_PARAMETERS
        ) from None
    if not isinstance(parameters, dict):
        raise InvalidRequestError(
            f"'{SAMPLING_PARAMETERS}' must be a JSON object", param=SAMPLING_PARAMETERS
        )
    values: dict[str, list[Any]] = {}
    for key, value in parameters.items():
        if key not in _KEYS:
            raise InvalidRequestError(
                f"'{SAMPLING_PARAMETERS}' key '{key}' is not supported; supported: "
                f"{', '.join(_KEYS)}",
                param=SAMPLING_PARAMETERS,
            )
        name, convert = _KEYS[key]
        try:
            values[name] = convert(value)
        except (TypeError, ValueError, OverflowError):
            raise InvalidRequestError(
                f"'{SAMPLING_PARAMETERS}' key '{key}' has an invalid value {value!r}",
                param=SAMPLING_PARAMETERS,
            ) from None
    return values
