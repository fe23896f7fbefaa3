"""A `TandemDeployment`'s spec as typed, validated values.

The resource's schema (`crd.py`) lets the API server refuse most bad specs;
`parse_spec` checks the same rules again plus those a schema cannot say
(a pool that the chosen mode needs), so the operator never renders objects
from a spec it only half understands. Field names are the resource's
(camelCase), converted once here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from tandem.router.config import ROUTER_MODES

EngineName = Literal["torch", "mocker"]
DeploymentMode = Literal["aggregated", "disaggregated"]
PlannerMode = Literal["load", "sla"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer"]
KvMedium = Literal["hbm"]

ENGINES: tuple[EngineName, ...] = ("torch", "mocker")
DEPLOYMENT_MODES: tuple[DeploymentMode, ...] = ("aggregated", "disaggregated")
PLANNER_MODES: tuple[PlannerMode, ...] = ("load", "sla")
SERVICE_TYPES: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer")
# Only device memory is a KV tier today; host_dram and nvme_ssd are reserved in the wire contract.
KV_MEDIA: tuple[KvMedium, ...] = ("hbm",)
# The workers' --kv-transport choices (prefill and decode pools must use the same one).
KV_TRANSPORTS = ("nixl", "grpc")
RESOURCE_KEYS = ("requests", "limits")
# The Services of deploy/k8s/base: what a resource that names no other uses.
DEFAULT_NATS = "nats://tandem-nats:4222"
DEFAULT_ETCD = "http://tandem-etcd:2379"
DEFAULT_PLANNER_ACCOUNT = "tandem-planner"

# A Kubernetes resource name that also leaves room for a role suffix ("-frontend").
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME_LENGTH = 40


class SpecError(ValueError):
    """The resource's spec cannot be deployed; the message names the field."""


@dataclass(frozen=True, slots=True)
class Resources:
    """Requests and limits of one container, quantities as the API writes them ("500m", "4Gi")."""

    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)

    def to_k8s(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        if self.requests:
            out["requests"] = dict(self.requests)
        if self.limits:
            out["limits"] = dict(self.limits)
        return out


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """One role's pods: how many, how big, which image, and flags added to the role's own."""

    replicas: int
    resources: Resources = field(default_factory=Resources)
    image: str = ""
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FrontendSpec:
    """The OpenAI frontend pods and the Service in front of them."""

    role: RoleSpec
    router_mode: str = "kv"
    service_type: ServiceType = "ClusterIP"


@dataclass(frozen=True, slots=True)
class KvTier:
    """One KV cache tier of every worker: its medium and its size in blocks (0 = engine default)."""

    medium: KvMedium
    blocks: int = 0


@dataclass(frozen=True, slots=True)
class KvCacheSpec:
    """The workers' KV cache: tokens per block and the tiers it spans."""

    block_size: int = 16
    tiers: tuple[KvTier, ...] = ()
    transport: str = ""
    """How prefill and decode workers move KV blocks; empty = the workers' default."""

    def blocks(self, medium: KvMedium) -> int:
        return next((tier.blocks for tier in self.tiers if tier.medium == medium), 0)


@dataclass(frozen=True, slots=True)
class PlannerSpec:
    """The planner pod that sizes the worker pool and scales its Deployment itself."""

    enabled: bool = False
    mode: PlannerMode = "load"
    min_workers: int = 1
    max_workers: int = 8
    adjustment_interval_seconds: float = 10.0
    ttft_target_ms: float = 0.0
    itl_target_ms: float = 0.0
    profile_config_map: str = ""
    """mode sla: the ConfigMap whose `profile.json` (from `tandem profile`) the planner reads."""
    image: str = ""
    resources: Resources = field(default_factory=Resources)
    service_account_name: str = DEFAULT_PLANNER_ACCOUNT


@dataclass(frozen=True, slots=True)
class InfraSpec:
    """Where the pods find NATS and etcd (the manifests of deploy/k8s/base by default)."""

    nats: str = DEFAULT_NATS
    etcd: str = DEFAULT_ETCD


@dataclass(frozen=True, slots=True)
class TandemDeploymentSpec:
    """Everything one `TandemDeployment` asks for."""

    model_name: str
    model_path: str
    engine: EngineName
    deployment_mode: DeploymentMode
    tandem_namespace: str
    frontend: FrontendSpec
    workers: Mapping[str, RoleSpec]
    """Worker pools by role: {"worker"} aggregated, {"prefill", "decode"} disaggregated."""
    kv_cache: KvCacheSpec
    planner: PlannerSpec
    infra: InfraSpec


def worker_roles(mode: DeploymentMode) -> tuple[str, ...]:
    """The worker pools a deployment mode runs, in the order they are rendered."""
    return ("worker",) if mode == "aggregated" else ("prefill", "decode")


def parse_spec(name: str, spec: Mapping[str, Any]) -> TandemDeploymentSpec:
    """The typed spec of resource `name`; `SpecError` naming the first bad field."""
    if not _NAME.match(name) or len(name) > MAX_NAME_LENGTH:
        raise SpecError(
            f"metadata.name {name!r}: lowercase letters, digits and '-', at most "
            f"{MAX_NAME_LENGTH} characters (role suffixes are added to it)"
        )
    _known(spec, "spec", ("model", "engine", "deploymentMode", "tandemNamespace", "frontend",
                          "worker", "prefill", "decode", "kvCache", "planner", "infrastructure"))  # fmt: skip
    model = _mapping(spec, "model", "spec")
    _known(model, "spec.model", ("name", "path"))
    model_name = _str(model, "name", "spec.model", required=True)
    engine = cast(EngineName, _choice(spec, "engine", "spec", ENGINES, "torch"))
    mode = cast(DeploymentMode, _choice(spec, "deploymentMode", "spec", DEPLOYMENT_MODES, "aggregated"))  # fmt: skip
    roles = worker_roles(mode)
    for role in ("worker", "prefill", "decode"):
        if role in spec and role not in roles:
            raise SpecError(f"spec.{role}: not a pool of deploymentMode {mode} (pools: {', '.join(roles)})")  # fmt: skip
    frontend_raw = _mapping(spec, "frontend", "spec")
    frontend = FrontendSpec(
        role=_role(frontend_raw, "spec.frontend", ("routerMode", "serviceType")),
        router_mode=_choice(
            frontend_raw, "routerMode", "spec.frontend", ROUTER_MODES, "kv"
        ),  # fmt: skip
        service_type=cast(
            ServiceType,
            _choice(frontend_raw, "serviceType", "spec.frontend", SERVICE_TYPES, "ClusterIP"),
        ),  # fmt: skip
    )
    workers = {role: _role(_mapping(spec, role, "spec"), f"spec.{role}") for role in roles}
    planner = _planner(_mapping(spec, "planner", "spec"))
    if planner.enabled and mode == "disaggregated" and planner.mode != "sla":
        raise SpecError(
            "spec.planner.mode: the planner sizes prefill and decode pools in mode sla only; "
            "in mode load it scales one aggregated pool"
        )
    if planner.enabled and planner.mode == "sla" and frontend.role.replicas > 1:
        raise SpecError(
            "spec.frontend.replicas: mode sla reads the frontends' /metrics through one "
            "Service, which would show it one frontend of several; run one frontend replica"
        )
    infra_raw = _mapping(spec, "infrastructure", "spec")
    _known(infra_raw, "spec.infrastructure", ("nats", "etcd"))
    return TandemDeploymentSpec(
        model_name=model_name,
        model_path=_str(model, "path", "spec.model"),
        engine=engine,
        deployment_mode=mode,
        tandem_namespace=_str(spec, "tandemNamespace", "spec") or name,
        frontend=frontend,
        workers=workers,
        kv_cache=_kv_cache(_mapping(spec, "kvCache", "spec")),
        planner=planner,
        infra=InfraSpec(
            nats=_str(infra_raw, "nats", "spec.infrastructure") or DEFAULT_NATS,
            etcd=_str(infra_raw, "etcd", "spec.infrastructure") or DEFAULT_ETCD,
        ),
    )


def _role(raw: Mapping[str, Any], where: str, extra_keys: tuple[str, ...] = ()) -> RoleSpec:
    _known(raw, where, ("replicas", "resources", "image", "extraArgs", *extra_keys))
    args = raw.get("extraArgs", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise SpecError(f"{where}.extraArgs: a list of strings")
    return RoleSpec(
        replicas=_int(raw, "replicas", where, 1, minimum=0),
        resources=_resources(_mapping(raw, "resources", where), f"{where}.resources"),
        image=_str(raw, "image", where),
        extra_args=tuple(args),
    )


def _planner(raw: Mapping[str, Any]) -> PlannerSpec:
    where = "spec.planner"
    _known(raw, where, ("enabled", "mode", "minWorkers", "maxWorkers", "adjustmentIntervalSeconds",
                        "ttftTargetMs", "itlTargetMs", "profileConfigMap", "image", "resources",
                        "serviceAccountName"))  # fmt: skip
    enabled = raw.get("enabled", False)
    if not isinstance(enabled, bool):
        raise SpecError(f"{where}.enabled: true or false")
    planner = PlannerSpec(
        enabled=enabled,
        mode=cast(PlannerMode, _choice(raw, "mode", where, PLANNER_MODES, "load")),
        min_workers=_int(raw, "minWorkers", where, 1, minimum=1),
        max_workers=_int(raw, "maxWorkers", where, 8, minimum=1),
        adjustment_interval_seconds=_number(raw, "adjustmentIntervalSeconds", where, 10.0),
        ttft_target_ms=_number(raw, "ttftTargetMs", where, 0.0, allow_zero=True),
        itl_target_ms=_number(raw, "itlTargetMs", where, 0.0, allow_zero=True),
        profile_config_map=_str(raw, "profileConfigMap", where),
        image=_str(raw, "image", where),
        resources=_resources(_mapping(raw, "resources", where), f"{where}.resources"),
        service_account_name=_str(raw, "serviceAccountName", where) or DEFAULT_PLANNER_ACCOUNT,
    )
    if planner.max_workers < planner.min_workers:
        raise SpecError(f"{where}.maxWorkers ({planner.max_workers}) is below minWorkers ({planner.min_workers})")  # fmt: skip
    if planner.mode == "sla" and not (planner.ttft_target_ms > 0 and planner.itl_target_ms > 0):
        raise SpecError(f"{where}: mode sla needs ttftTargetMs and itlTargetMs above 0")
    if planner.mode == "sla" and not planner.profile_config_map:
        raise SpecError(
            f"{where}.profileConfigMap: mode sla needs the ConfigMap holding profile.json "
            "(kubectl create configmap NAME --from-file=profile.json)"
        )
    return planner


def _kv_cache(raw: Mapping[str, Any]) -> KvCacheSpec:
    where = "spec.kvCache"
    _known(raw, where, ("blockSize", "tiers", "transport"))
    tiers_raw = raw.get("tiers", [])
    if not isinstance(tiers_raw, list):
        raise SpecError(f"{where}.tiers: a list of {{medium, blocks}}")
    tiers: list[KvTier] = []
    for i, tier in enumerate(tiers_raw):
        at = f"{where}.tiers[{i}]"
        if not isinstance(tier, Mapping):
            raise SpecError(f"{at}: an object {{medium, blocks}}")
        _known(tier, at, ("medium", "blocks"))
        medium = cast(KvMedium, _choice(tier, "medium", at, KV_MEDIA, None))
        if any(t.medium == medium for t in tiers):
            raise SpecError(f"{at}.medium: {medium} is listed twice")
        tiers.append(KvTier(medium, _int(tier, "blocks", at, 0, minimum=0)))
    transport = raw.get("transport", "")
    if transport:
        transport = _choice(raw, "transport", where, KV_TRANSPORTS, None)
    return KvCacheSpec(
        block_size=_int(raw, "blockSize", where, 16, minimum=1),
        tiers=tuple(tiers),
        transport=transport,
    )


def _resources(raw: Mapping[str, Any], where: str) -> Resources:
    _known(raw, where, RESOURCE_KEYS)
    parts: dict[str, dict[str, str]] = {}
    for key in RESOURCE_KEYS:
        quantities = raw.get(key, {})
        if not isinstance(quantities, Mapping):
            raise SpecError(f"{where}.{key}: an object of quantities")
        for resource, value in quantities.items():
            # The API takes 2 and "2" alike; its models (and so our objects) hold strings.
            if isinstance(value, bool) or not isinstance(value, int | float | str) or value == "":
                raise SpecError(f"{where}.{key}.{resource}: a quantity such as 2, \"500m\" or \"4Gi\"")  # fmt: skip
        parts[key] = {str(k): str(v) for k, v in quantities.items()}
    return Resources(parts["requests"], parts["limits"])


def _known(raw: Mapping[str, Any], where: str, keys: tuple[str, ...]) -> None:
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(keys)})")


def _mapping(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}.{key}: an object")
    return value


def _str(raw: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise SpecError(f"{where}.{key}: a string")
    if required and not value:
        raise SpecError(f"{where}.{key}: required")
    return value


def _choice(
    raw: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...], default: str | None
) -> str:
    value = raw.get(key, default)
    if value is None:
        raise SpecError(f"{where}.{key}: required, one of {', '.join(choices)}")
    if value not in choices:
        raise SpecError(f"{where}.{key}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _int(raw: Mapping[str, Any], key: str, where: str, default: int, *, minimum: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}.{key}: an integer")
    if value < minimum:
        raise SpecError(f"{where}.{key}: at least {minimum}, got {value}")
    return value


def _number(
    raw: Mapping[str, Any], key: str, where: str, default: float, *, allow_zero: bool = False
) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}.{key}: a number")
    if value < 0 or (value == 0 and not allow_zero):
        raise SpecError(f"{where}.{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)
