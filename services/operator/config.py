"""Settings of the operator (`tandem operator`)."""

from __future__ import annotations

from dataclasses import dataclass

from tandem.runtime.config import option


@dataclass(frozen=True, kw_only=True)
class OperatorConfig:
    """Tandem operator: reconciles TandemDeployment resources into Deployments, Services, ConfigMaps.

    Each TandemDeployment (CRD in deploy/k8s/base/crd.yaml) becomes, per role
    (frontend, worker or prefill + decode, planner), a ConfigMap, a Deployment
    and a Service, owned by the resource. The resource is the source of truth:
    a change of its spec rolls the roles it reaches, hand edits of the objects
    are undone every --resync-interval, and objects it no longer asks for are
    deleted. `tandem operator crd` prints the CRD; `tandem operator render -f
    FILE` prints the objects a resource becomes, without a cluster.
    """

    watch_namespace: list[str] = option(
        default_factory=list,
        help="Namespaces whose TandemDeployments are reconciled; empty = the pod's own "
        "(in a cluster, else the kubeconfig context's, else default).",
    )
    all_namespaces: bool = option(False, "Reconcile TandemDeployments of every namespace.")
    kubeconfig: str = option(
        "",
        "kubeconfig file; empty = the pod's service account, else $KUBECONFIG or ~/.kube/config.",
    )
    resync_interval: float = option(
        60.0, "Seconds between two re-applications of each resource (undoes hand edits)."
    )
    health_port: int = option(8080, "Port of the liveness endpoint /healthz (0 = none).")
    log_level: str = option("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def __post_init__(self) -> None:
        if self.resync_interval <= 0:
            raise ValueError("--resync-interval must be > 0 seconds")
        if self.all_namespaces and self.watch_namespace:
            raise ValueError("--all-namespaces and --watch-namespace exclude each other")
