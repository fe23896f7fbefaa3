"""deploy/k8s rendered by the real `kubectl kustomize`, every object checked as the API would take it.

For each overlay (aggregated, disaggregated): every object validates as its
model of the official `kubernetes` client; each TandemDeployment validates
against the CRD's schema and is rendered by the operator's own `render`, whose
objects validate too; every `tandem` command line (manifests and rendered)
parses with that service's real parser, with the environment its pod gets;
nats-server and etcd flags exist in those binaries; every image is one that
docker/build.sh builds; the planner's and the operator's RBAC allow the calls
they make. No API server is involved: none can run here.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tandem.operator.config import OperatorConfig
from tandem.operator.crd import API_VERSION, KIND, crd_manifest
from tandem.operator.k8s_models import validate_object
from tandem.operator.reconcile import KINDS
from tandem.operator.render import render
from tandem.runtime.config import env_name, flat_fields, parse_config

from tests.support.crd_schema import check_schema

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("aggregated", "disaggregated")
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) is not installed")

Obj = dict[str, Any]


def kustomize(path: Path) -> list[Obj]:
    out = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj], list[Obj]]:
    """(overlay name, its objects, the objects its TandemDeployments render to)."""
    objects = kustomize(K8S / "overlays" / request.param)
    rendered = [o for doc in objects if doc["kind"] == KIND for o in render(doc)]
    rendered += [
        o for doc in objects if doc["kind"] == KIND for o in render(_with_sla_planner(doc))
    ]
    return request.param, objects, rendered


def _with_sla_planner(doc: Obj) -> Obj:
    """The overlay's resource with the planner in mode sla: its flags are checked too."""
    variant = copy.deepcopy(doc)
    variant["metadata"]["name"] += "-sla"
    variant["spec"]["frontend"]["replicas"] = 1
    variant["spec"]["planner"] = {"enabled": True, "mode": "sla", "ttftTargetMs": 500,
                                  "itlTargetMs": 50, "profileConfigMap": "profile"}  # fmt: skip
    return variant


def containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) of every Deployment and StatefulSet."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                yield obj, container


def test_base_renders_and_validates() -> None:
    objects = kustomize(K8S / "base")
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "StatefulSet", "Deployment", "Role", "ClusterRole"} <= kinds
    for obj in objects:
        validate_object(obj)
    assert [o for o in objects if o["kind"] == "CustomResourceDefinition"] == [crd_manifest()]


def test_every_object_validates_as_its_api_model(overlay: tuple[str, list[Obj], list[Obj]]) -> None:
    name, objects, rendered = overlay
    resources = [o for o in objects if o["kind"] == KIND]
    assert len(resources) == 1, name
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for obj in objects:
        if obj["kind"] == KIND:
            assert obj["apiVersion"] == API_VERSION
            check_schema(obj["spec"], schema["properties"]["spec"])
        else:
            validate_object(obj)
    assert rendered, "the TandemDeployment rendered to nothing"
    for obj in rendered:
        validate_object(obj)
        assert obj["metadata"]["namespace"] == "tandem"
    roles = {o["metadata"]["labels"]["app.kubernetes.io/component"] for o in rendered}
    expected = {"aggregated": {"frontend", "worker", "planner"},
                "disaggregated": {"frontend", "prefill", "decode"}}[name]  # fmt: skip
    assert roles == expected | {"planner"}  # the mode sla variant has one


def _parsers() -> dict[str, Callable[[list[str]], Any]]:
    from tandem.frontend.config import FrontendConfig
    from tandem.planner.config import PlannerConfig
    from tandem.worker.__main__ import parse_args as worker_parse

    return {
        "frontend": lambda argv: parse_config(FrontendConfig, argv, prog="tandem frontend"),
        "worker": worker_parse,
        "planner": lambda argv: parse_config(PlannerConfig, argv, prog="tandem planner"),
        "operator": lambda argv: parse_config(OperatorConfig, argv, prog="tandem operator"),
    }


def _config_classes(service: str, parsed: Any) -> list[type[Any]]:
    if service == "worker":
        return [type(parsed[0]), type(parsed[1])]
    return [type(parsed)]


def _pod_environment(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The TANDEM_* environment of the container: its ConfigMaps, then its own env."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        # Downward-API values (pod IP, namespace) stand in as plausible ones.
        env[item["name"]] = item.get("value", "10.1.2.3" if "IP" in str(item) else "tandem")
    return env


def test_every_tandem_flag_and_variable_exists_in_the_cli(
    overlay: tuple[str, list[Obj], list[Obj]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _, objects, rendered = overlay
    everything = objects + rendered
    parsers = _parsers()
    seen: set[str] = set()
    for workload, container in containers(everything):
        if container.get("command") != ["tandem"]:
            continue
        service, argv = container["args"][0], list(container["args"][1:])
        assert service in parsers, f"{workload['metadata']['name']}: tandem {service}?"
        environment = _pod_environment(everything, container)
        for key in [k for k in os.environ if k.startswith("TANDEM_")]:
            monkeypatch.delenv(key)
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        try:
            parsed = parsers[service](argv)
        except SystemExit:
            pytest.fail(f"{workload['metadata']['name']}: `tandem {service} {' '.join(argv)}` "
                        f"is refused by its parser:\n{capsys.readouterr().err}")  # fmt: skip
        known = {
            env_name(f) for cls in _config_classes(service, parsed) for f, _, _ in flat_fields(cls)
        }
        unknown = sorted(k for k in environment if k.startswith("TANDEM_") and k not in known)
        assert not unknown, f"{workload['metadata']['name']}: tandem {service} reads no {unknown}"
        seen.add(service)
    assert {"frontend", "worker", "planner", "operator"} <= seen


def test_nats_and_etcd_flags_exist_in_their_binaries(
    overlay: tuple[str, list[Obj], list[Obj]],
) -> None:
    _, objects, _ = overlay
    binaries = {"nats": shutil.which("nats-server") or "/usr/sbin/nats-server",
                "etcd": shutil.which("etcd") or "/usr/bin/etcd"}  # fmt: skip
    checked = 0
    for _, container in containers(objects):
        binary = binaries.get(container["name"])
        if binary is None:
            continue
        if not Path(binary).exists():
            pytest.skip(f"{binary} is not installed: cannot check its flags")
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        help_text = out.stdout + out.stderr
        for arg in container["args"]:
            if arg.startswith("--"):
                flag = arg.split("=", 1)[0]
                assert re.search(rf"{re.escape(flag)}\b", help_text), f"{binary} has no {flag}"
                checked += 1
    assert checked >= 6


def test_every_image_is_one_docker_builds(overlay: tuple[str, list[Obj], list[Obj]]) -> None:
    _, objects, rendered = overlay
    script = (ROOT / "docker" / "build.sh").read_text()
    built = {f"tandem-{name}" for name in re.findall(r"^build (\w+) ", script, re.M)}
    assert {
        "tandem-base",
        "tandem-frontend",
        "tandem-worker",
        "tandem-nats",
        "tandem-etcd",
    } <= built
    for workload, container in containers(objects + rendered):
        repository = container["image"].rsplit(":", 1)[0]
        assert repository in built, f"{workload['metadata']['name']}: {container['image']} is not built by docker/build.sh"  # fmt: skip


def _rules(objects: list[Obj], kind: str, name: str) -> list[Obj]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]["rules"]  # type: ignore[no-any-return]


def _allows(rules: list[Obj], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in rules)  # fmt: skip


def test_rbac_allows_what_the_planner_and_the_operator_call(
    overlay: tuple[str, list[Obj], list[Obj]],
) -> None:
    _, objects, rendered = overlay
    planner = _rules(objects, "Role", "tandem-planner")
    for verb in ("get", "patch"):  # KubernetesConnector: read the scale, merge-patch it
        assert _allows(planner, "apps", "deployments/scale", verb)
    assert not _allows(planner, "apps", "deployments", "patch")  # the rest is not the planner's
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    for workload, _ in containers(rendered):
        account = workload["spec"]["template"]["spec"].get("serviceAccountName")
        assert account is None or account in accounts
    operator = _rules(objects, "Role", "tandem-operator")
    groups = {"ConfigMap": "", "Service": "", "Deployment": "apps"}
    for kind in KINDS:  # Reconciler: read, create, apply (patch), list and delete stale ones
        for verb in ("get", "create", "patch", "list", "delete"):
            assert _allows(operator, groups[kind], kind.lower() + "s", verb), (kind, verb)
    assert _allows(operator, "tandem.dev", "tandemdeployments", "watch")
    assert _allows(operator, "tandem.dev", "tandemdeployments/status", "patch")
    binding = next(o for o in objects if o["kind"] == "ClusterRoleBinding")
    operator_pod = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "tandem-operator")  # fmt: skip
    assert binding["subjects"][0]["namespace"] == operator_pod["metadata"]["namespace"]
    assert operator_pod["spec"]["template"]["spec"]["serviceAccountName"] == "tandem-operator"
