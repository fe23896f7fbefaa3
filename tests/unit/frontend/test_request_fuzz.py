"""Property: whatever a client POSTs to the OpenAI routes, the answer is never a 5xx or a hang.

A frontend over a fake worker, in-process; hypothesis drives it from a thread
with bodies drawn from the schemas `/openapi.json` publishes, then mutated
(fields set to any JSON value, lone surrogates, unknown fields, required ones
dropped), raw bytes, and pathological JSON. Every error is the OpenAI error
object, and a body valid by the published schema is never refused for a type.
Derandomized: CI sees the same examples every run.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tandem.frontend.openapi import ErrorResponse

# Generous: a request here takes milliseconds; a hang is what this bounds.
_TIMEOUT_S = 30
_BODIES = {"chat/completions": "ChatCompletionBody", "completions": "CompletionBody"}
_DEEP = 100_000
# Bodies that once escaped as 500s, or could: depth, number magnitude, bad Unicode.
PATHOLOGICAL = [
    b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "m", "prompt": "a\\udc00b"}',
    b'{"model": "m", "prompt": "\xed\xa0\x80"}',  # a surrogate, UTF-8 encoded
    b'{"model": "m", "prompt": "\xff\xfe"}',
    b'{"model": "m", "prompt": "hi", "stop": ' + b"[" * _DEEP + b"]" * _DEEP + b"}",
    b'{"model": "m", "prompt": "hi", "user": ' + b"[" * _DEEP + b"]" * _DEEP + b"}",
    b"[" * _DEEP + b"]" * _DEEP,
    b'{"a": ' * _DEEP + b"1" + b"}" * _DEEP,
    b'{"model": "m", "prompt": "hi", "temperature": 1e400}',
    b'{"model": "m", "prompt": "hi", "seed": ' + b"9" * 5000 + b"}",
    b'{"model": "m", "prompt": [' + b"9" * 5000 + b"]}",
    b'{"model": "m", "prompt": "hi", "metadata": {"x": -' + b"9" * 5000 + b"}}",
    b'{"model": "m", "prompt": "hi", "temperature": NaN}',
    b"",
    b"null",
]

# Text, sometimes around a UTF-16 surrogate: lone ones (hypothesis leaves them out) or a pair.
_plain_texts = st.text(max_size=8)
_texts = (
    _plain_texts
    | _plain_texts
    | st.builds(
        "{}{}{}".format,
        st.text(max_size=3),
        st.sampled_from(["\ud800", "\udc00", "\udbff\udfff"]),
        st.text(max_size=3),
    )
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: json.dumps writes them as non-JSON tokens
    | _texts
    | st.sampled_from(["", "user", "assistant", "text", "none", "\n"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_texts, inner, max_size=3),
    max_leaves=6,
)


def from_schema(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid against `schema`, a JSON Schema of the kinds `/openapi.json` holds."""
    if "$ref" in schema:
        return st.deferred(
            lambda: from_schema(components[schema["$ref"].rsplit("/")[-1]], components)
        )
    # `oneOf` beside `anyOf` is the precise form of the same field (the prompt).
    options = schema.get("oneOf") or schema.get("anyOf")
    if options:
        return st.one_of([from_schema(option, components) for option in options])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        return st.floats(
            low,
            schema.get("maximum"),
            exclude_min="exclusiveMinimum" in schema,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 8))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(schema.get("items", {}), components)
        return st.lists(
            items, min_size=schema.get("minItems", 0), max_size=schema.get("maxItems", 3)
        )
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        if not properties:  # free-form: the only one here must be empty (logit_bias)
            return st.just({})
        return st.fixed_dictionaries(
            {name: from_schema(properties[name], components) for name in required},
            optional={
                name: from_schema(sub, components)
                for name, sub in properties.items()
                if name not in required
            },
        )
    return _json_values  # {}: any JSON value


def _encode(body: dict[str, Any], ascii_only: bool) -> bytes:
    # Not ASCII: surrogates go out as the (invalid) UTF-8 a careless client would write.
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def _requests(draw: st.DrawFn, schemas: dict[str, Any]) -> tuple[str, bytes, bool]:
    """(path, body, whether the body is valid by the schema): a schema-valid body, sometimes
    with fields set to any JSON value, unknown ones added, required ones dropped."""
    path = draw(st.sampled_from(list(_BODIES)))
    schema = schemas[_BODIES[path]]
    body = draw(from_schema(schema, schemas))
    body["model"] = draw(st.just("m") | st.text(max_size=3))
    fields = [*schema["properties"], "messages", "prompt", "bogus"]
    mutations = draw(st.lists(st.sampled_from(fields), max_size=3))
    for name in mutations:
        body[name] = draw(_json_values)
    drops = draw(st.lists(st.sampled_from(schema["required"]), max_size=1))
    for name in drops:
        body.pop(name, None)
    return path, _encode(body, ascii_only=draw(st.booleans())), not mutations and not drops


def _post(url: str, raw: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, raw, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_answer(status: int, payload: bytes) -> None:
    """Not a 5xx; an error is the OpenAI error object, of a client error's type."""
    assert status < 500, payload[:300]
    if status != 200:
        error = msgspec.json.decode(payload, type=ErrorResponse).error
        assert error.message and error.type == "invalid_request_error", error


async def test_pathological_json_is_a_400_not_a_500(frontend_url: str) -> None:
    def run() -> list[tuple[int, bytes]]:
        return [_post(f"{frontend_url}/v1/{path}", raw) for path in _BODIES for raw in PATHOLOGICAL]

    for status, payload in await asyncio.to_thread(run):
        assert status == 400, payload[:300]
        error = msgspec.json.decode(payload, type=ErrorResponse).error
        assert error.type == "invalid_request_error" and error.message


async def test_no_body_gets_a_5xx_or_hangs(frontend_url: str) -> None:
    def fuzz() -> None:
        with urllib.request.urlopen(f"{frontend_url}/openapi.json", timeout=_TIMEOUT_S) as resp:
            schemas = json.loads(resp.read())["components"]["schemas"]
        seen: Counter[int] = Counter()

        @settings(
            max_examples=200,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(request=_requests(schemas), junk=st.none() | st.binary(max_size=40))
        def post_anything(request: tuple[str, bytes, bool], junk: bytes | None) -> None:
            path, raw, schema_valid = request
            status, payload = _post(f"{frontend_url}/v1/{path}", raw if junk is None else junk)
            check_answer(status, payload)
            seen[status] += 1
            if schema_valid and junk is None:
                # The schema published is the one enforced: a body valid by it has the right
                # types (a 400 is a rule across fields, or an unknown model's 404).
                assert status != 422, payload

        post_anything()
        assert all(seen[status] for status in (200, 400, 422)), seen  # every kind exercised

    # The server runs on this test's event loop; the client must not block it.
    await asyncio.to_thread(fuzz)
