"""A `TandemDeployment` into the Kubernetes objects of each role: a pure function.

`render(body)` reads the resource (metadata + spec) and returns plain dicts,
in the API's JSON form, ready to send: per role a ConfigMap (the settings
every service reads as `TANDEM_*` environment), a Deployment and a Service.
Roles: `frontend`, the worker pools (`worker`, or `prefill` + `decode`) and,
when enabled, `planner`. Nothing here talks to a cluster, so the same function
serves the operator and `tandem operator render` (and its tests).

Each pod template carries a hash of what its pods are made from (the
template and the role's ConfigMap): any change of the spec that reaches a
role changes its hash, so that Deployment rolls, and only that one.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .crd import API_VERSION, KIND
from .spec import RoleSpec, TandemDeploymentSpec, parse_spec

Obj = dict[str, Any]

SPEC_HASH_ANNOTATION = "tandem.dev/spec-hash"
REPLICAS_OWNER_ANNOTATION = "tandem.dev/replicas-owner"
"""On a worker Deployment whose replicas the planner sets: the operator leaves them alone."""
MANAGED_BY = "tandem-operator"

# Container ports: fixed in the pod, so Services and probes can name them.
FRONTEND_HTTP_PORT = 8000
FRONTEND_GRPC_PORT = 8001  # KServe v2 gRPC (Triton's port)
WORKER_GRPC_PORT = 9000
WORKER_METRICS_PORT = 9100
PLANNER_METRICS_PORT = 9200

# The images docker/ builds (compose.yaml's names); a role's `image` overrides them.
DEFAULT_IMAGES = {
    "frontend": "tandem-frontend:latest",
    "worker": "tandem-worker:latest",
    "planner": "tandem-planner:latest",
}
# A worker drains (--drain-timeout, 10 s by default) before it leaves; give it room.
WORKER_TERMINATION_GRACE_SECONDS = 60


def render(body: Mapping[str, Any]) -> list[Obj]:
    """Every object resource `body` asks for, each owned by it when its uid is known."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace") or "default")
    spec = parse_spec(name, body.get("spec") or {})
    objects = _frontend(name, namespace, spec)
    for role, pool in spec.workers.items():
        objects += _worker_pool(name, namespace, spec, role, pool)
    if spec.planner.enabled:
        objects += _planner(name, namespace, spec)
    if meta.get("uid"):
        owner = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": name,
            "uid": str(meta["uid"]),
            "controller": True,
            "blockOwnerDeletion": True,
        }
        for obj in objects:
            obj["metadata"]["ownerReferences"] = [dict(owner)]
    return objects


def spec_hash(pod_template: Mapping[str, Any], config: Mapping[str, str]) -> str:
    """16 hex digits over what a role's pods are made from (template without its hash, config)."""
    template = copy.deepcopy(dict(pod_template))
    template.get("metadata", {}).get("annotations", {}).pop(SPEC_HASH_ANNOTATION, None)
    raw = json.dumps({"template": template, "config": dict(config)}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def object_name(name: str, role: str) -> str:
    """The name of role `role`'s ConfigMap, Deployment and Service."""
    return f"{name}-{role}"


def _labels(name: str, role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tandem",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": role,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def _selector(name: str, role: str) -> dict[str, str]:
    # Selectors are immutable: only the labels that never change.
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": role}


def _meta(name: str, namespace: str, role: str) -> Obj:
    return {"name": object_name(name, role), "namespace": namespace, "labels": _labels(name, role)}


def _runtime_env(spec: TandemDeploymentSpec) -> dict[str, str]:
    """What every service of the deployment shares (RuntimeConfig's fields), as environment."""
    return {
        "TANDEM_NAMESPACE": spec.tandem_namespace,
        "TANDEM_NATS": spec.infra.nats,
        "TANDEM_ETCD": spec.infra.etcd,
    }


def _config_map(name: str, namespace: str, role: str, data: Mapping[str, str]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(name, namespace, role),
        "data": dict(data),
    }


def _container(
    role: str,
    image: str,
    args: list[str],
    config_name: str,
    ports: list[tuple[str, int]],
    health_port: int,
    resources: Mapping[str, Any],
    env: list[Obj] | None = None,
) -> Obj:
    probe = {"httpGet": {"path": "/health", "port": health_port}, "periodSeconds": 5}
    container: Obj = {
        "name": role,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["tandem"],
        "args": args,
        "envFrom": [{"configMapRef": {"name": config_name}}],
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports],
        # Startup can load a model for minutes; after that a failed /health restarts the pod.
        "startupProbe": {**probe, "failureThreshold": 120},
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
    }
    if env:
        container["env"] = env
    if resources:
        container["resources"] = dict(resources)
    return container


def _deployment(
    name: str,
    namespace: str,
    role: str,
    replicas: int,
    container: Obj,
    config: Mapping[str, str],
    metrics_port: int,
    pod_extra: Mapping[str, Any] | None = None,
) -> Obj:
    template: Obj = {
        "metadata": {
            "labels": _labels(name, role),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(metrics_port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {"containers": [container], **(pod_extra or {})},
    }
    digest = spec_hash(template, config)
    template["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = digest
    meta = _meta(name, namespace, role)
    meta["annotations"] = {SPEC_HASH_ANNOTATION: digest}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(name, role)},
            "template": template,
        },
    }


def _service(
    name: str,
    namespace: str,
    role: str,
    ports: list[tuple[str, int]],
    *,
    service_type: str = "ClusterIP",
    headless: bool = False,
) -> Obj:
    spec: Obj = {
        "selector": _selector(name, role),
        "ports": [
            {"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
            for port_name, port in ports
        ],
    }
    if headless:
        spec["clusterIP"] = "None"  # one DNS record per pod: each worker is addressed on its own
    else:
        spec["type"] = service_type
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace, role),
            "spec": spec}  # fmt: skip


def _frontend(name: str, namespace: str, spec: TandemDeploymentSpec) -> list[Obj]:
    role, fe = "frontend", spec.frontend.role
    config = _runtime_env(spec)
    args = [
        "frontend",
        "--http-host", "0.0.0.0",
        "--http-port", str(FRONTEND_HTTP_PORT),
        "--grpc-port", str(FRONTEND_GRPC_PORT),
        "--model-name", spec.model_name,
        "--router-mode", spec.frontend.router_mode,
    ]  # fmt: skip
    if spec.model_path:
        args += ["--model-path", spec.model_path]
    ports = [("http", FRONTEND_HTTP_PORT), ("grpc", FRONTEND_GRPC_PORT)]
    container = _container(role, fe.image or DEFAULT_IMAGES["frontend"], args + list(fe.extra_args),
                           object_name(name, role), ports, FRONTEND_HTTP_PORT,
                           fe.resources.to_k8s())  # fmt: skip
    return [
        _config_map(name, namespace, role, config),
        _deployment(name, namespace, role, fe.replicas, container, config, FRONTEND_HTTP_PORT),
        _service(name, namespace, role, ports, service_type=spec.frontend.service_type),
    ]


def worker_args(spec: TandemDeploymentSpec, role: str) -> list[str]:
    """`tandem worker` flags of one pool's pods (engine, ports, model, KV cache, role)."""
    args = [
        "worker",
        "--engine", spec.engine,
        "--host", "0.0.0.0",
        "--port", str(WORKER_GRPC_PORT),
        "--metrics-port", str(WORKER_METRICS_PORT),
        "--kv-cache-block-size", str(spec.kv_cache.block_size),
    ]  # fmt: skip
    if role != "worker":
        args += ["--disaggregation-mode", role]
        if spec.kv_cache.transport:
            args += ["--kv-transport", spec.kv_cache.transport]
    if spec.engine == "mocker":
        args += ["--model-name", spec.model_name]
    if spec.model_path:
        args += ["--model-path", spec.model_path]
    if blocks := spec.kv_cache.blocks("hbm"):
        args += ["--num-kv-blocks", str(blocks)]
    return args


def _worker_pool(
    name: str, namespace: str, spec: TandemDeploymentSpec, role: str, pool: RoleSpec
) -> list[Obj]:
    config = _runtime_env(spec)
    ports = [("grpc", WORKER_GRPC_PORT), ("metrics", WORKER_METRICS_PORT)]
    # Others reach a worker at the address it registers in etcd: its pod's IP.
    env = [{"name": "TANDEM_ADVERTISE_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]  # fmt: skip
    container = _container(role, pool.image or DEFAULT_IMAGES["worker"],
                           worker_args(spec, role) + list(pool.extra_args), object_name(name, role),
                           ports, WORKER_METRICS_PORT, pool.resources.to_k8s(), env)  # fmt: skip
    replicas = pool.replicas
    planner = spec.planner
    scaled = planner.enabled
    if scaled and role == "worker":
        replicas = max(planner.min_workers, min(replicas, planner.max_workers))
    deployment = _deployment(name, namespace, role, replicas, container, config,
                             WORKER_METRICS_PORT,
                             {"terminationGracePeriodSeconds": WORKER_TERMINATION_GRACE_SECONDS})  # fmt: skip
    if scaled:
        deployment["metadata"]["annotations"][REPLICAS_OWNER_ANNOTATION] = "planner"
    return [
        _config_map(name, namespace, role, config),
        deployment,
        _service(name, namespace, role, ports, headless=True),
    ]


PROFILE_DIR = "/etc/tandem/profile"


def planner_args(name: str, spec: TandemDeploymentSpec) -> list[str]:
    """`tandem planner` flags: bounds, mode, and the Deployments its connector scales."""
    planner = spec.planner
    args = [
        "planner",
        "--model", spec.model_name,
        "--min-workers", str(planner.min_workers),
        "--max-workers", str(planner.max_workers),
        "--adjustment-interval", repr(planner.adjustment_interval_seconds),
        "--metrics-port", str(PLANNER_METRICS_PORT),
        "--connector", "kubernetes",
    ]  # fmt: skip
    if spec.deployment_mode == "aggregated":
        args += ["--kubernetes-deployment", object_name(name, "worker")]
    else:
        pools = ",".join(f"{role}={object_name(name, role)}" for role in spec.workers)
        args += ["--kubernetes-pool-deployment", pools]
    if planner.mode == "sla":
        args += [
            "--mode", "sla",
            "--ttft-target-ms", repr(planner.ttft_target_ms),
            "--itl-target-ms", repr(planner.itl_target_ms),
            "--profile", f"{PROFILE_DIR}/profile.json",
            "--frontend-url", f"http://{object_name(name, 'frontend')}:{FRONTEND_HTTP_PORT}",
        ]  # fmt: skip
    return args


def _planner(name: str, namespace: str, spec: TandemDeploymentSpec) -> list[Obj]:
    role, planner = "planner", spec.planner
    config = _runtime_env(spec)
    ports = [("metrics", PLANNER_METRICS_PORT)]
    # The connector scales Deployments of the planner's own namespace.
    env = [{"name": "TANDEM_KUBERNETES_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]  # fmt: skip
    container = _container(role, planner.image or DEFAULT_IMAGES["planner"],
                           planner_args(name, spec), object_name(name, role),
                           ports, PLANNER_METRICS_PORT, planner.resources.to_k8s(), env)  # fmt: skip
    pod: Obj = {"serviceAccountName": planner.service_account_name}
    if planner.mode == "sla":
        container["volumeMounts"] = [
            {"name": "profile", "mountPath": PROFILE_DIR, "readOnly": True}
        ]
        pod["volumes"] = [{"name": "profile", "configMap": {"name": planner.profile_config_map}}]
    # One planner per model (a standby would only wait for the leader's lease).
    deployment = _deployment(name, namespace, role, 1, container, config, PLANNER_METRICS_PORT, pod)
    deployment["spec"]["strategy"] = {"type": "Recreate"}
    return [
        _config_map(name, namespace, role, config),
        deployment,
        _service(name, namespace, role, ports),
    ]
