"""`render`: a TandemDeployment into per-role objects, each valid as its Kubernetes API model."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from tandem.operator.k8s_models import InvalidObject, validate_object
from tandem.operator.reconcile import desired_body, selector, stale
from tandem.operator.render import (
    REPLICAS_OWNER_ANNOTATION,
    SPEC_HASH_ANNOTATION,
    render,
)
from tandem.operator.spec import SpecError


def _body(spec: dict[str, Any], name: str = "demo", uid: str | None = "uid-1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "prod"}
    if uid:
        meta["uid"] = uid
    return {"apiVersion": "tandem.dev/v1alpha1", "kind": "TandemDeployment", "metadata": meta,
            "spec": spec}  # fmt: skip


AGGREGATED: dict[str, Any] = {
    "model": {"name": "SmolLM2-135M-Instruct"},
    "engine": "torch",
    "worker": {"replicas": 3, "resources": {"requests": {"cpu": 2, "memory": "4Gi"}}},
    "kvCache": {"blockSize": 32, "tiers": [{"medium": "hbm", "blocks": 1024}]},
    "planner": {"enabled": True, "minWorkers": 1, "maxWorkers": 2},
}
DISAGGREGATED: dict[str, Any] = {
    "model": {"name": "mock-8b"},
    "engine": "mocker",
    "deploymentMode": "disaggregated",
    "prefill": {"replicas": 2},
    "decode": {"replicas": 5},
    "kvCache": {"transport": "grpc"},
}


def _by(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"{kind}/{name} in {[(o['kind'], o['metadata']['name']) for o in objects]}"
    )
    return found[0]


def _args(deployment: dict[str, Any]) -> list[str]:
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_aggregated_renders_a_configmap_deployment_and_service_per_role() -> None:
    objects = render(_body(AGGREGATED))
    names = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert names == sorted(
        (kind, f"demo-{role}")
        for role in ("frontend", "worker", "planner")
        for kind in ("ConfigMap", "Deployment", "Service")
    )
    for obj in objects:
        validate_object(obj)  # the official client's model takes every object as it is
        assert obj["metadata"]["namespace"] == "prod"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert obj["metadata"]["ownerReferences"][0]["controller"] is True


def test_worker_flags_carry_engine_kv_cache_and_resources() -> None:
    objects = render(_body(AGGREGATED))
    worker = _by(objects, "Deployment", "demo-worker")
    args = _args(worker)
    assert args[:3] == ["worker", "--engine", "torch"]
    assert args[args.index("--kv-cache-block-size") + 1] == "32"
    assert args[args.index("--num-kv-blocks") + 1] == "1024"
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}}
    assert container["envFrom"] == [{"configMapRef": {"name": "demo-worker"}}]
    config = _by(objects, "ConfigMap", "demo-worker")["data"]
    assert config["TANDEM_NAMESPACE"] == "demo"  # tandemNamespace defaults to the resource's name
    assert config["TANDEM_ETCD"] == "http://tandem-etcd:2379"
    # The planner owns the replicas: clamped into its bounds at creation, marked as its own.
    assert worker["spec"]["replicas"] == 2
    assert worker["metadata"]["annotations"][REPLICAS_OWNER_ANNOTATION] == "planner"
    headless = _by(objects, "Service", "demo-worker")
    assert headless["spec"]["clusterIP"] == "None"


def test_planner_scales_the_worker_deployment_with_its_own_account() -> None:
    planner = _by(render(_body(AGGREGATED)), "Deployment", "demo-planner")
    args = _args(planner)
    assert args[args.index("--connector") + 1] == "kubernetes"
    assert args[args.index("--kubernetes-deployment") + 1] == "demo-worker"
    assert args[args.index("--max-workers") + 1] == "2"
    pod = planner["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tandem-planner"
    assert planner["spec"]["replicas"] == 1 and planner["spec"]["strategy"]["type"] == "Recreate"


def test_disaggregated_renders_prefill_and_decode_pools() -> None:
    objects = render(_body(DISAGGREGATED))
    assert {o["metadata"]["name"] for o in objects} == {
        "demo-frontend",
        "demo-prefill",
        "demo-decode",
    }
    for role, replicas in (("prefill", 2), ("decode", 5)):
        deployment = _by(objects, "Deployment", f"demo-{role}")
        args = _args(deployment)
        assert args[args.index("--disaggregation-mode") + 1] == role
        assert args[args.index("--kv-transport") + 1] == "grpc"
        assert args[args.index("--model-name") + 1] == "mock-8b"
        assert deployment["spec"]["replicas"] == replicas
        assert REPLICAS_OWNER_ANNOTATION not in deployment["metadata"]["annotations"]
    for obj in objects:
        validate_object(obj)


def test_a_spec_change_rolls_only_the_roles_it_reaches() -> None:
    before = {
        o["metadata"]["name"]: o for o in render(_body(AGGREGATED)) if o["kind"] == "Deployment"
    }
    changed = copy.deepcopy(AGGREGATED)
    changed["worker"]["resources"]["requests"]["cpu"] = 4
    after = {o["metadata"]["name"]: o for o in render(_body(changed)) if o["kind"] == "Deployment"}

    def digest(d: dict[str, Any]) -> str:
        template_hash = d["spec"]["template"]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        assert d["metadata"]["annotations"][SPEC_HASH_ANNOTATION] == template_hash
        return str(template_hash)

    assert digest(before["demo-worker"]) != digest(after["demo-worker"])  # its pods roll
    assert digest(before["demo-frontend"]) == digest(after["demo-frontend"])
    assert digest(before["demo-planner"]) == digest(after["demo-planner"])
    # A shared setting (the etcd endpoint, in every role's ConfigMap) rolls every role.
    moved = copy.deepcopy(AGGREGATED)
    moved["infrastructure"] = {"etcd": "http://etcd.other:2379"}
    again = {o["metadata"]["name"]: o for o in render(_body(moved)) if o["kind"] == "Deployment"}
    assert all(digest(again[n]) != digest(before[n]) for n in before)


def test_render_is_deterministic() -> None:
    assert render(_body(AGGREGATED)) == render(_body(copy.deepcopy(AGGREGATED)))


def test_without_a_uid_nothing_is_owned() -> None:
    assert all("ownerReferences" not in o["metadata"] for o in render(_body(AGGREGATED, uid=None)))


def test_extra_args_come_after_the_roles_own_flags() -> None:
    spec = copy.deepcopy(DISAGGREGATED)
    spec["decode"]["extraArgs"] = ["--speedup-ratio", "4"]
    decode = _by(render(_body(spec)), "Deployment", "demo-decode")
    assert _args(decode)[-2:] == ["--speedup-ratio", "4"]


def test_validation_refuses_what_the_api_would() -> None:
    deployment = _by(render(_body(AGGREGATED)), "Deployment", "demo-frontend")
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["bogus"] = 1
    with pytest.raises(InvalidObject, match="bogus"):
        validate_object(unknown)
    missing = copy.deepcopy(deployment)
    del missing["spec"]["selector"]
    with pytest.raises(InvalidObject, match="selector"):
        validate_object(missing)
    snake = copy.deepcopy(deployment)
    port = snake["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    port["container_port"] = port.pop("containerPort")
    with pytest.raises(InvalidObject, match="container_port"):
        validate_object(snake)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(InvalidObject, match="replicas"):
        validate_object(wrong_type)
    with pytest.raises(InvalidObject, match="no API model"):
        validate_object({"apiVersion": "v1", "kind": "NoSuchKind", "metadata": {"name": "x"}})


def test_planner_owned_replicas_are_left_out_once_the_deployment_exists() -> None:
    worker = _by(render(_body(AGGREGATED)), "Deployment", "demo-worker")
    assert desired_body(worker, exists=False)["spec"]["replicas"] == 2
    assert "replicas" not in desired_body(worker, exists=True)["spec"]
    assert "replicas" in worker["spec"]  # the rendered object itself is untouched
    frontend = _by(render(_body(AGGREGATED)), "Deployment", "demo-frontend")
    assert desired_body(frontend, exists=True)["spec"]["replicas"] == 1  # the operator's own


def test_objects_the_spec_no_longer_asks_for_are_stale() -> None:
    existing = [(o["kind"], o["metadata"]["name"]) for o in render(_body(AGGREGATED))]
    without_planner = copy.deepcopy(AGGREGATED)
    without_planner["planner"] = {"enabled": False}
    assert stale(existing, render(_body(without_planner))) == [
        ("ConfigMap", "demo-planner"),
        ("Deployment", "demo-planner"),
        ("Service", "demo-planner"),
    ]
    assert stale(existing, render(_body(AGGREGATED))) == []
    assert (
        selector("demo")
        == "app.kubernetes.io/instance=demo,app.kubernetes.io/managed-by=tandem-operator"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"engine": "vllm"}, "spec.engine"),
        ({"deploymentMode": "split"}, "spec.deploymentMode"),
        ({"prefill": {"replicas": 1}}, "spec.prefill: not a pool of deploymentMode aggregated"),
        ({"worker": {"replicas": -1}}, "spec.worker.replicas: at least 0"),
        ({"worker": {"replicas": "2"}}, "spec.worker.replicas: an integer"),
        ({"worker": {"replica": 2}}, "spec.worker: unknown field 'replica'"),
        (
            {"worker": {"resources": {"requests": {"cpu": True}}}},
            "spec.worker.resources.requests.cpu",
        ),
        (
            {"kvCache": {"tiers": [{"medium": "host_dram", "blocks": 1}]}},
            "spec.kvCache.tiers[0].medium",
        ),
        ({"kvCache": {"transport": "carrier-pigeon"}}, "spec.kvCache.transport"),
        (
            {"planner": {"enabled": True, "minWorkers": 3, "maxWorkers": 2}},
            "maxWorkers (2) is below minWorkers (3)",
        ),
        (
            {"planner": {"enabled": True, "mode": "sla"}},
            "mode sla needs ttftTargetMs and itlTargetMs",
        ),
        ({"frontend": {"routerMode": "psychic"}}, "spec.frontend.routerMode"),
        ({"model": {}}, "spec.model.name: required"),
        ({"colour": "blue"}, "spec: unknown field 'colour'"),
    ],
)
def test_bad_specs_name_the_field(change: dict[str, Any], message: str) -> None:
    spec = {**copy.deepcopy(AGGREGATED), **change}
    with pytest.raises(SpecError, match=_escape(message)):
        render(_body(spec))


SLA_PLANNER: dict[str, Any] = {
    "enabled": True,
    "mode": "sla",
    "ttftTargetMs": 400,
    "itlTargetMs": 40,
    "profileConfigMap": "mock-profile",
    "maxWorkers": 6,
}


def test_disaggregated_planner_in_sla_mode_scales_both_pools() -> None:
    objects = render(_body({**copy.deepcopy(DISAGGREGATED), "planner": dict(SLA_PLANNER)}))
    planner = _by(objects, "Deployment", "demo-planner")
    args = _args(planner)
    assert (
        args[args.index("--kubernetes-pool-deployment") + 1]
        == "prefill=demo-prefill,decode=demo-decode"
    )
    assert "--kubernetes-deployment" not in args
    assert args[args.index("--mode") + 1] == "sla"
    assert args[args.index("--frontend-url") + 1] == "http://demo-frontend:8000"
    assert args[args.index("--profile") + 1] == "/etc/tandem/profile/profile.json"
    pod = planner["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "profile", "configMap": {"name": "mock-profile"}}]
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/etc/tandem/profile"
    for role in ("prefill", "decode"):
        pool = _by(objects, "Deployment", f"demo-{role}")
        assert pool["metadata"]["annotations"][REPLICAS_OWNER_ANNOTATION] == "planner"
    for obj in objects:
        validate_object(obj)


@pytest.mark.parametrize(
    ("planner", "frontend", "message"),
    [
        (
            {"enabled": True},
            {},
            "spec.planner.mode: the planner sizes prefill and decode pools in mode sla only",
        ),
        ({**SLA_PLANNER, "profileConfigMap": ""}, {}, "spec.planner.profileConfigMap"),
        (SLA_PLANNER, {"replicas": 2}, "spec.frontend.replicas: mode sla reads"),
    ],
)
def test_planner_settings_it_cannot_run_are_refused(
    planner: dict[str, Any], frontend: dict[str, Any], message: str
) -> None:
    spec = {**copy.deepcopy(DISAGGREGATED), "planner": planner, "frontend": frontend}
    with pytest.raises(SpecError, match=_escape(message)):
        render(_body(spec))


def test_a_name_without_room_for_role_suffixes_is_refused() -> None:
    with pytest.raises(SpecError, match="metadata.name"):
        render(_body(AGGREGATED, name="Has_Capitals"))
    with pytest.raises(SpecError, match="at most 40"):
        render(_body(AGGREGATED, name="x" * 41))


def _escape(text: str) -> str:
    import re

    return re.escape(text)
