"""The OpenAPI 3.1 document the frontend serves at `/openapi.json`.

Its request schemas are generated from the same declared types the endpoints
decode with (`request_types.py`), so the schema published is the one enforced.
Answers are described briefly; every error is the OpenAI error object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import Struct

from .endpoints import BaseEndpoint

_REF = "#/components/schemas/{name}"


class ErrorObject(Struct, frozen=True, forbid_unknown_fields=True):
    """What went wrong: `param` names the request field at fault, if one is."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(Struct, frozen=True, forbid_unknown_fields=True):
    """The body of every error answer (and the last event of a stream that failed)."""

    error: ErrorObject


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {"application/json": {"schema": schema}}
    return answer


def _ref(struct: type[Struct]) -> dict[str, str]:
    return {"$ref": _REF.format(name=struct.__name__)}


_ERRORS = {"default": _answer("An OpenAI error object.", _ref(ErrorResponse))}


def _generation(endpoint: BaseEndpoint[Any]) -> dict[str, Any]:
    body = endpoint.body.body_type
    return {
        "post": {
            "operationId": f"create_{endpoint.name}",
            "summary": (body.__doc__ or "").strip(),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(body)}},
            },
            "responses": {
                "200": {
                    "description": "The answer: a JSON object, or with `stream` server-sent "
                    "events ending in `data: [DONE]`.",
                    "content": {"application/json": {}, "text/event-stream": {}},
                },
                **_ERRORS,
            },
        }
    }


def _get(summary: str, answer: str, **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, **extra, "responses": {"200": _answer(answer), **_ERRORS}}}


def openapi_json(endpoints: Sequence[BaseEndpoint[Any]]) -> bytes:
    """The OpenAPI document of the API that serves `endpoints`, as JSON bytes."""
    types = [*(e.body.body_type for e in endpoints), ErrorResponse]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    paths: dict[str, Any] = {e.path: _generation(e) for e in endpoints}
    paths["/v1/models"] = _get("The models served here.", "A list of model objects.")
    paths["/v1/models/{model}"] = _get(
        "One served model.",
        "A model object.",
        parameters=[
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
    )
    paths["/health"] = _get("Liveness, and the workers of each model.", "Healthy.")
    document = {
        "openapi": "3.1.0",
        "info": {"title": "Tandem OpenAI-compatible API", "version": "1"},
        "paths": paths,
        "components": {"schemas": components},
    }
    return msgspec.json.encode(document)
