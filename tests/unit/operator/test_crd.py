"""The CRD: written out as deploy/k8s/base/crd.yaml, valid as its API model, and in step with `parse_spec`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tandem.operator.crd import crd_manifest
from tandem.operator.k8s_models import validate_object
from tandem.operator.spec import parse_spec

from tests.support.crd_schema import check_schema

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = ROOT / "deploy" / "k8s" / "base" / "crd.yaml"


def spec_schema() -> dict[str, Any]:
    version = crd_manifest()["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]  # type: ignore[no-any-return]


def full_value(schema: dict[str, Any]) -> Any:
    """A value that sets every field the schema declares (the first choice of each enum)."""
    if schema.get("x-kubernetes-int-or-string"):
        return "1"
    kind = schema["type"]
    if kind == "object":
        if "properties" in schema:
            return {k: full_value(v) for k, v in schema["properties"].items()}
        return {"cpu": "1"}
    if kind == "array":
        return [full_value(schema["items"])]
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": False}[kind]


def test_crd_yaml_is_what_the_code_declares() -> None:
    written = yaml.safe_load(CRD_FILE.read_text())
    assert written == crd_manifest(), (
        "deploy/k8s/base/crd.yaml is stale: run `tandem operator crd > deploy/k8s/base/crd.yaml`"
    )


def test_crd_is_a_valid_custom_resource_definition() -> None:
    model = validate_object(crd_manifest())
    assert model.spec.names.kind == "TandemDeployment"
    assert model.spec.versions[0].subresources.status is not None


@pytest.mark.parametrize("mode", ["aggregated", "disaggregated"])
def test_every_schema_field_is_one_parse_spec_reads(mode: str) -> None:
    spec = full_value(spec_schema())
    spec["deploymentMode"] = mode
    for pool in ("prefill", "decode") if mode == "aggregated" else ("worker",):
        del spec[pool]
    if mode == "disaggregated":
        spec["planner"]["enabled"] = False
    check_schema(spec, spec_schema())
    parsed = parse_spec("full", spec)  # a field the schema has and parse_spec lacks: refused
    assert parsed.deployment_mode == mode
    assert parsed.kv_cache.tiers[0].medium == "hbm"


def test_parse_spec_reads_no_field_the_schema_lacks() -> None:
    """Each field parse_spec knows is in the schema: else the API server would prune it."""
    import re

    source = (ROOT / "services" / "operator" / "spec.py").read_text()
    known: set[str] = set()
    for group in re.findall(r"_known\(\s*\w+,\s*[^,]+,\s*(\([^)]*\)|[A-Z_]+)", source, re.S):
        known |= set(re.findall(r'"(\w+)"', group))
    known |= {"requests", "limits"}
    in_schema: set[str] = set()

    def walk(schema: dict[str, Any]) -> None:
        for key, sub in schema.get("properties", {}).items():
            in_schema.add(key)
            walk(sub)
        if "items" in schema:
            walk(schema["items"])

    walk(spec_schema())
    assert known and known <= in_schema, sorted(known - in_schema)


def test_schema_refuses_unknown_and_mistyped_fields() -> None:
    with pytest.raises(AssertionError, match="colour"):
        check_schema({"model": {"name": "m"}, "colour": "x"}, spec_schema())
    with pytest.raises(AssertionError, match="replicas"):
        check_schema({"model": {"name": "m"}, "worker": {"replicas": -1}}, spec_schema())
    with pytest.raises(AssertionError, match="engine"):
        check_schema({"model": {"name": "m"}, "engine": "vllm"}, spec_schema())
