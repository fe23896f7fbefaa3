"""`/openapi.json`: an OpenAPI 3.1 document whose request schemas are the declared types."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import msgspec
from tandem.frontend.endpoints import ENDPOINTS
from tandem.frontend.openapi import openapi_json
from tandem.frontend.request_types import ChatCompletionBody, CompletionBody


def _get(url: str) -> tuple[str, dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.headers["Content-Type"], json.loads(resp.read())


async def test_the_frontend_serves_its_openapi_document(frontend_url: str) -> None:
    content_type, document = await asyncio.to_thread(_get, f"{frontend_url}/openapi.json")
    assert content_type.startswith("application/json")
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model}"} <= set(
        paths
    )
    schemas = document["components"]["schemas"]
    for endpoint in ENDPOINTS:
        body = paths[endpoint.path]["post"]["requestBody"]["content"]["application/json"]
        name = body["schema"]["$ref"].rsplit("/", 1)[1]
        assert name == endpoint.body.body_type.__name__
        assert paths[endpoint.path]["post"]["responses"]["default"]["content"]
    # Every $ref points into the document.
    refs = {v.rsplit("/", 1)[1] for v in _values(document, "$ref")}
    assert refs <= set(schemas)


def test_request_schemas_are_generated_from_the_types_the_endpoints_decode() -> None:
    _, components = msgspec.json.schema_components(
        [ChatCompletionBody, CompletionBody], ref_template="#/components/schemas/{name}"
    )
    published = json.loads(openapi_json(ENDPOINTS))["components"]["schemas"]
    for name, schema in components.items():
        assert published[name] == schema
    chat = published["ChatCompletionBody"]
    assert chat["additionalProperties"] is False  # unknown fields are refused, as documented
    assert set(chat["required"]) == {"model", "messages"}
    assert set(chat["properties"]) == set(ChatCompletionBody.__struct_fields__)
    # A user's message needs content; an assistant's may be null.
    assert "content" in published["UserMessage"]["required"]
    assert "content" not in published["AssistantMessage"]["required"]
    # The limits the decoder enforces are the ones published.
    max_tokens = chat["properties"]["max_tokens"]["anyOf"][0]
    assert (max_tokens["minimum"], max_tokens["maximum"]) == (1, 2**31 - 1)


def _values(node: Any, key: str) -> list[Any]:
    if isinstance(node, dict):
        found = [node[key]] if key in node else []
        return found + [v for child in node.values() for v in _values(child, key)]
    if isinstance(node, list):
        return [v for child in node for v in _values(child, key)]
    return []
