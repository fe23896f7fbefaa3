"""A custom resource checked against its CRD's OpenAPI v3 schema, as strictly as the API server's strict field validation."""

from __future__ import annotations

from typing import Any


def check_schema(value: Any, schema: dict[str, Any], path: str = "spec") -> None:
    """The subset of OpenAPI v3 the CRD uses, strictly (an unknown field is an error here)."""
    if schema.get("x-kubernetes-int-or-string"):
        assert isinstance(value, int | str) and not isinstance(value, bool), path
        return
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), f"{path}: not an object"
        props = schema.get("properties")
        for key in schema.get("required", []):
            assert key in value, f"{path}.{key}: required"
        for key, item in value.items():
            if props is not None:
                assert key in props, f"{path}.{key}: not in the schema"
                check_schema(item, props[key], f"{path}.{key}")
            elif "additionalProperties" in schema:
                check_schema(item, schema["additionalProperties"], f"{path}.{key}")
    elif kind == "array":
        assert isinstance(value, list), path
        for i, item in enumerate(value):
            check_schema(item, schema["items"], f"{path}[{i}]")
    elif kind == "string":
        assert isinstance(value, str), path
        assert len(value) >= schema.get("minLength", 0), path
    elif kind in ("integer", "number"):
        assert isinstance(value, int | float) and not isinstance(value, bool), path
        if kind == "integer":
            assert isinstance(value, int), path
        if "minimum" in schema:
            low = schema["minimum"]
            assert value > low if schema.get("exclusiveMinimum") else value >= low, path
    elif kind == "boolean":
        assert isinstance(value, bool), path
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
