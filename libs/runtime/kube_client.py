"""A Kubernetes API client (official `kubernetes` package, asyncio) from in-cluster or kubeconfig credentials.

One way for every Tandem process that talks to the API server (the planner's
kubernetes connector, the operator): a pod's service account when there is
one and no kubeconfig is named, else the kubeconfig (`$KUBECONFIG` or
`~/.kube/config` when none is named). Missing credentials are a `StartupError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .startup import StartupError

IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass(frozen=True, slots=True)
class KubeConnection:
    """An API client and what it was made from: the server and the namespace to default to."""

    api_client: Any
    server: str
    namespace: str
    """The pod's own namespace in a cluster, else the kubeconfig context's, else "default"."""


def _in_cluster_namespace() -> str | None:
    """The pod's namespace when this runs in a pod with a service account, else None."""
    if not os.path.exists(IN_CLUSTER_NAMESPACE_FILE):
        return None
    with open(IN_CLUSTER_NAMESPACE_FILE, encoding="utf-8") as f:
        return f.read().strip()


async def connect(kubeconfig: str = "") -> KubeConnection:
    """Load credentials and make the client; no request is sent yet."""
    from kubernetes.aio import config as kube_config
    from kubernetes.aio.client import ApiClient, Configuration

    client_config = Configuration()
    pod_namespace = None if kubeconfig else _in_cluster_namespace()
    try:
        if pod_namespace is not None:
            kube_config.load_incluster_config(client_configuration=client_config)
            namespace = pod_namespace
        else:
            path = kubeconfig or None
            await kube_config.load_kube_config(config_file=path, client_configuration=client_config)
            _, active = kube_config.list_kube_config_contexts(config_file=path)
            namespace = (active or {}).get("context", {}).get("namespace", "")
    except (kube_config.ConfigException, OSError) as exc:
        where = kubeconfig or "in-cluster, $KUBECONFIG or ~/.kube/config"
        raise StartupError(f"no Kubernetes credentials ({where}): {exc}") from None
    return KubeConnection(ApiClient(configuration=client_config), str(client_config.host),
                          namespace or "default")  # fmt: skip
