"""The operator's Reconciler against a real HTTP server speaking the API's object endpoints.

The server (`tests/support/kube_api.py`, its own process) stores ConfigMaps,
Services and Deployments, serves server-side apply, labelled lists, deletes
and the scale subresource; the Reconciler reaches it with the official
client through a kubeconfig, as it would an API server. What is not
exercised: kopf's watches and status writes, and real SSA field ownership.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tandem.operator.k8s_models import validate_object
from tandem.operator.reconcile import Reconciler
from tandem.operator.render import SPEC_HASH_ANNOTATION, render
from tandem.planner.kubernetes_connector import KubernetesConnector
from tandem.runtime import kube_client

from tests.support.kube_api import KubeApiProcess

TOKEN = "operator-token"
SPEC: dict[str, Any] = {
    "model": {"name": "SmolLM2-135M-Instruct"},
    "engine": "mocker",
    "worker": {"replicas": 2, "resources": {"requests": {"cpu": "1"}}},
    "planner": {"enabled": True, "minWorkers": 1, "maxWorkers": 4},
}


def _body(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "tandem.dev/v1alpha1", "kind": "TandemDeployment",
            "metadata": {"name": "demo", "namespace": "tandem", "uid": "u-1"}, "spec": spec}  # fmt: skip


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApiProcess]:
    api = KubeApiProcess.start(tmp_path, token=TOKEN, context_namespace="tandem")
    yield api
    api.stop()


def _stored(api: KubeApiProcess) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in api.objects().items() if k.split("/")[1] == "tandem"}


def _template_hash(obj: dict[str, Any]) -> str:
    return str(obj["spec"]["template"]["metadata"]["annotations"][SPEC_HASH_ANNOTATION])


async def test_reconcile_creates_applies_keeps_planner_replicas_and_prunes(
    kube_api: KubeApiProcess,
) -> None:
    connection = await kube_client.connect(str(kube_api.kubeconfig))
    reconciler = Reconciler(connection.api_client)
    try:
        objects = render(_body(SPEC))
        first = await reconciler.reconcile("demo", "tandem", objects)
        assert len(first.created) == 9 and not first.applied and not first.deleted
        stored = _stored(kube_api)
        assert sorted(stored) == sorted(
            f"{kind}/tandem/demo-{role}"
            for role in ("frontend", "worker", "planner")
            for kind in ("configmaps", "services", "deployments")
        )
        for obj in stored.values():
            # What the server stored is what the API would take (its own metadata aside:
            # a creationTimestamp string comes back from the model as a datetime).
            validate_object({**obj, "metadata": {"name": obj["metadata"]["name"]}})
        assert stored["deployments/tandem/demo-worker"]["spec"]["replicas"] == 2

        # The planner scales the pool through the scale subresource...
        planner = KubernetesConnector(connection.api_client, "tandem", "demo-worker")
        await planner.scale_to(4, "test: load")
        # ...and a spec change afterwards rolls the workers but leaves their count alone.
        changed = copy.deepcopy(SPEC)
        changed["worker"]["resources"]["requests"]["cpu"] = "2"
        second = await reconciler.reconcile("demo", "tandem", render(_body(changed)))
        assert not second.created and len(second.applied) == 9 and not second.deleted
        worker = _stored(kube_api)["deployments/tandem/demo-worker"]
        assert worker["spec"]["replicas"] == 4
        assert _template_hash(worker) != _template_hash(stored["deployments/tandem/demo-worker"])
        container = worker["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"] == {"requests": {"cpu": "2"}}
        frontend = _stored(kube_api)["deployments/tandem/demo-frontend"]
        assert _template_hash(frontend) == _template_hash(
            stored["deployments/tandem/demo-frontend"]
        )

        # A hand edit of the frontend's replicas is undone: the resource is the source of truth.
        await KubernetesConnector(connection.api_client, "tandem", "demo-frontend").scale_to(7, "by hand")  # fmt: skip
        await reconciler.reconcile("demo", "tandem", render(_body(changed)))
        assert kube_api.replicas("tandem", "demo-frontend") == 1

        # The planner turned off: its objects go, the rest stays.
        changed["planner"] = {"enabled": False}
        third = await reconciler.reconcile("demo", "tandem", render(_body(changed)))
        assert sorted(third.deleted) == ["ConfigMap/demo-planner", "Deployment/demo-planner", "Service/demo-planner"]  # fmt: skip
        assert not any("demo-planner" in key for key in _stored(kube_api))
        assert len(_stored(kube_api)) == 6
    finally:
        await reconciler.close()
    requests = kube_api.requests()
    applies = [r for r in requests if r["method"] == "PATCH" and "/scale" not in r["path"]]
    assert applies and all(
        r["content_type"].startswith("application/apply-patch+yaml") for r in applies
    )
    assert all(r["query"].get("fieldManager") == "tandem-operator" for r in applies)
    assert all(r["query"].get("force") == "true" for r in applies)
    lists = [r for r in requests if r["method"] == "GET" and r["path"].endswith(("/configmaps", "/services", "/deployments"))]  # fmt: skip
    assert lists and all(
        r["query"]["labelSelector"] == "app.kubernetes.io/instance=demo,app.kubernetes.io/managed-by=tandem-operator"
        for r in lists
    )  # fmt: skip


async def test_objects_of_another_resource_are_never_pruned(kube_api: KubeApiProcess) -> None:
    connection = await kube_client.connect(str(kube_api.kubeconfig))
    reconciler = Reconciler(connection.api_client)
    try:
        other = _body(copy.deepcopy(SPEC))
        other["metadata"]["name"] = "other"
        await reconciler.reconcile("other", "tandem", render(other))
        result = await reconciler.reconcile("demo", "tandem", render(_body(SPEC)))
        assert not result.deleted
        assert sum(1 for key in _stored(kube_api) if "/other-" in key) == 9
    finally:
        await reconciler.close()
