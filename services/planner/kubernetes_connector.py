"""The planner's `kubernetes` connector: the replica target becomes a Deployment's `replicas`.

It sets `spec.replicas` through the Deployment's `scale` subresource
(`/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`) with the official
`kubernetes` client, so it needs exactly the RBAC of `deploy/k8s/base/planner-rbac.yaml`
(`get`, `patch` on `deployments/scale`) and never touches the rest of the
Deployment, which the operator or GitOps owns. Credentials: the pod's service
account in a cluster, else a kubeconfig.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from tandem.runtime import kube_client
from tandem.runtime.config import option

from .connectors import follow_target
from .target import ReplicaTarget, TargetStore

log = logging.getLogger("tandem.planner.kubernetes")

_MERGE_PATCH = "application/merge-patch+json"
_REQUEST_TIMEOUT_SECONDS = 10.0
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True, kw_only=True)
class KubernetesConnectorConfig:
    """Which Deployment `--connector kubernetes` scales, and how it reaches the API server."""

    kubernetes_deployment: str = option(
        "", "Deployment whose replicas --connector kubernetes sets (the model's worker pool)."
    )
    kubernetes_pool_deployment: list[str] = option(
        default_factory=list,
        help="Deployments of a disaggregated model's pools, role=name "
        "(prefill=llm-prefill,decode=llm-decode): a target's pools go to them.",
    )
    kubernetes_namespace: str = option(
        "",
        "Namespace of that Deployment; empty = the pod's own (in a cluster), else the "
        "kubeconfig context's, else default.",
    )
    kubeconfig: str = option(
        "",
        "kubeconfig file of --connector kubernetes; empty = the pod's service account in a "
        "cluster, else $KUBECONFIG or ~/.kube/config.",
    )

    def __post_init__(self) -> None:
        self.pool_deployments()  # refuse a malformed list at parse time

    def pool_deployments(self) -> dict[str, str]:
        """--kubernetes-pool-deployment as {role: Deployment name}."""
        pools: dict[str, str] = {}
        for item in self.kubernetes_pool_deployment:
            role, _, name = item.partition("=")
            if not role or not name or role in pools:
                raise ValueError(
                    f"--kubernetes-pool-deployment {item!r}: role=deployment, each role once"
                )
            pools[role] = name
        return pools

    @property
    def is_set(self) -> bool:
        """Whether any Deployment to scale is named."""
        return bool(self.kubernetes_deployment or self.kubernetes_pool_deployment)


class KubernetesConnector:
    """Owns one API client and sets one Deployment's replicas through its `scale` subresource.

    `PoolFollower` holds one per pool and is the planner's `Connector`. A failed call (API
    server unreachable, RBAC missing, Deployment absent) is logged and retried
    with backoff until it succeeds or the task is cancelled: a target is
    never dropped, and the next one waits for it.
    """

    def __init__(self, api_client: Any, namespace: str, deployment: str) -> None:
        from kubernetes.aio.client import AppsV1Api

        self._api_client = api_client
        self._apps = AppsV1Api(api_client)
        self.namespace = namespace
        self.deployment = deployment

    @classmethod
    async def connect(cls, config: KubernetesConnectorConfig) -> KubernetesConnector:
        """Load credentials (in-cluster, else kubeconfig) and make the client; no request yet."""
        if not config.kubernetes_deployment:
            raise ValueError("--connector kubernetes needs --kubernetes-deployment")
        connection = await kube_client.connect(config.kubeconfig)
        namespace = config.kubernetes_namespace or connection.namespace
        return cls(connection.api_client, namespace, config.kubernetes_deployment)

    async def replicas(self) -> int:
        """The Deployment's `spec.replicas` as its scale subresource says."""
        scale = await self._apps.read_namespaced_deployment_scale(
            self.deployment, self.namespace, _request_timeout=_REQUEST_TIMEOUT_SECONDS
        )
        return int(scale.spec.replicas or 0) if scale.spec is not None else 0

    async def scale_to(self, replicas: int, reason: str) -> None:
        attempt = 0
        while True:
            try:
                await self._scale_once(replicas, reason)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every API or transport failure: log, wait, retry
                delay = _RETRY_SECONDS[min(attempt, len(_RETRY_SECONDS) - 1)]
                attempt += 1
                log.warning(
                    "kubernetes scale failed deployment=%s/%s replicas=%d attempt=%d "
                    "retry_in=%.1fs error=%s",
                    self.namespace,
                    self.deployment,
                    replicas,
                    attempt,
                    delay,
                    _describe(exc),
                )
                await asyncio.sleep(delay)

    async def _scale_once(self, replicas: int, reason: str) -> None:
        current = await self.replicas()
        if current == replicas:
            return
        await self._apps.patch_namespaced_deployment_scale(
            self.deployment,
            self.namespace,
            {"spec": {"replicas": replicas}},
            field_manager="tandem-planner",
            _content_type=_MERGE_PATCH,
            _request_timeout=_REQUEST_TIMEOUT_SECONDS,
        )
        log.info(
            "kubernetes scaled deployment=%s/%s replicas=%d->%d reason=%s",
            self.namespace,
            self.deployment,
            current,
            replicas,
            reason or "-",
        )

    async def close(self) -> None:
        await self._api_client.close()


class PoolFollower:
    """Owns the API client and one connector per Deployment; the planner's `Connector`.

    A target with `pools` (a disaggregated model: `{"prefill": 2, "decode": 3}`)
    sets each pool's Deployment (--kubernetes-pool-deployment); one without
    sets --kubernetes-deployment to its `replicas`.
    """

    def __init__(self, api_client: Any, namespace: str, config: KubernetesConnectorConfig) -> None:
        self._api_client = api_client
        self.whole = (
            KubernetesConnector(api_client, namespace, config.kubernetes_deployment)
            if config.kubernetes_deployment
            else None
        )
        self.pools = {
            role: KubernetesConnector(api_client, namespace, name)
            for role, name in config.pool_deployments().items()
        }

    async def apply(self, target: ReplicaTarget) -> None:
        if target.pools and self.pools:
            for role, replicas in sorted(target.pools.items()):
                connector = self.pools.get(role)
                if connector is None:
                    log.warning("no --kubernetes-pool-deployment for pool %s; it is left as it is", role)  # fmt: skip
                    continue
                await connector.scale_to(replicas, target.reason)
        elif self.whole is not None:
            await self.whole.scale_to(target.replicas, target.reason)
        else:
            log.warning("target of %s has no pools and no --kubernetes-deployment is set", target.model)  # fmt: skip

    async def close(self) -> None:
        await self._api_client.close()


async def start_follower(
    config: KubernetesConnectorConfig, store: TargetStore, model: str
) -> asyncio.Task[None]:
    """Connect (StartupError on bad credentials), then a task applying every target of `model`.

    The task owns the client and closes it when cancelled.
    """
    connection = await kube_client.connect(config.kubeconfig)
    namespace = config.kubernetes_namespace or connection.namespace
    follower = PoolFollower(connection.api_client, namespace, config)
    log.info(
        "kubernetes connector namespace=%s deployment=%s pools=%s server=%s",
        namespace,
        config.kubernetes_deployment or "-",
        ",".join(config.kubernetes_pool_deployment) or "-",
        connection.server,
    )

    async def follow() -> None:
        try:
            await follow_target(store, model, follower)
        finally:
            await follower.close()

    task = asyncio.create_task(follow(), name="kubernetes-connector")
    task.add_done_callback(_log_failure)
    return task


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("kubernetes connector stopped: %r", task.exception())


def _describe(exc: BaseException) -> str:
    """One line: the API's status and reason, or the transport error."""
    status = getattr(exc, "status", None)
    if status:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    return f"{type(exc).__name__}: {exc}"
