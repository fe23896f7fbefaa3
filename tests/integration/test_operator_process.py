"""`tandem operator` (kopf) as a real process against a real HTTP server speaking the API.

The server (`tests/support/kube_api.py`, its own process) serves discovery,
the TandemDeployment collection with watches, merge and JSON patches of it
and its status, events, and the objects the operator makes. The operator
reaches it through a kubeconfig with a bearer token, as it would a cluster.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tandem.operator.render import SPEC_HASH_ANNOTATION

from tests.support.kube_api import KubeApiProcess
from tests.support.processes import ServiceProcess

TOKEN = "kopf-token"
CR_PATH = "/apis/tandem.dev/v1alpha1/namespaces/tandem/tandemdeployments"
SPEC: dict[str, Any] = {
    "model": {"name": "mock-8b"},
    "engine": "mocker",
    "worker": {"replicas": 2, "resources": {"requests": {"cpu": "1"}}},
}


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApiProcess]:
    api = KubeApiProcess.start(tmp_path, token=TOKEN, context_namespace="tandem")
    yield api
    api.stop()


def _wait(proc: ServiceProcess, api: KubeApiProcess, predicate: Any, what: str) -> None:
    proc.wait_until(lambda: predicate(api.objects()), 60.0, what)


def _template_hash(objects: dict[str, Any], name: str) -> str | None:
    found = objects.get(f"deployments/tandem/{name}")
    if found is None:
        return None
    return str(found["spec"]["template"]["metadata"]["annotations"][SPEC_HASH_ANNOTATION])


def test_operator_reconciles_a_resource_and_follows_its_spec(
    kube_api: KubeApiProcess, log_dir: Path
) -> None:
    kube_api.post(CR_PATH, {"apiVersion": "tandem.dev/v1alpha1", "kind": "TandemDeployment",
                            "metadata": {"name": "demo"}, "spec": copy.deepcopy(SPEC)})  # fmt: skip
    operator = ServiceProcess(
        "tandem.operator",
        ["--kubeconfig", str(kube_api.kubeconfig), "--watch-namespace", "tandem",
         "--health-port", "0", "--resync-interval", "2"],
        log_dir,
    )  # fmt: skip
    try:
        _wait(operator, kube_api, lambda objs: "deployments/tandem/demo-worker" in objs,
              "the worker Deployment")  # fmt: skip
        objects = kube_api.objects()
        names = sorted(k for k in objects if k.split("/")[0] in ("configmaps", "services", "deployments"))  # fmt: skip
        assert names == sorted(f"{kind}/tandem/demo-{role}" for role in ("frontend", "worker")
                               for kind in ("configmaps", "services", "deployments"))  # fmt: skip
        worker = objects["deployments/tandem/demo-worker"]
        owner = worker["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "TandemDeployment" and owner["uid"] == objects["tandemdeployments/tandem/demo"]["metadata"]["uid"]  # fmt: skip
        # kopf records the handler's result in the resource's status.
        _wait(operator, kube_api,
              lambda objs: "demo-worker" in str((objs["tandemdeployments/tandem/demo"].get("status") or {}).get("reconcile")),
              "the handler's result in the status")  # fmt: skip
        before = _template_hash(objects, "demo-worker")

        # A spec change rolls the workers.
        kube_api.merge_patch(f"{CR_PATH}/demo", {"spec": {"worker": {"resources": {"requests": {"cpu": "3"}}}}})  # fmt: skip
        _wait(operator, kube_api, lambda objs: _template_hash(objs, "demo-worker") not in (None, before),
              "the worker Deployment to roll")  # fmt: skip
        worker = kube_api.objects()["deployments/tandem/demo-worker"]
        container = worker["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"] == {"requests": {"cpu": "3"}}

        # A hand edit is undone by the resync: the resource is the source of truth.
        kube_api.merge_patch("/apis/apps/v1/namespaces/tandem/deployments/demo-frontend/scale",
                             {"spec": {"replicas": 5}})  # fmt: skip
        assert kube_api.replicas("tandem", "demo-frontend") == 5
        started = time.monotonic()
        operator.wait_until(lambda: kube_api.replicas("tandem", "demo-frontend") == 1, 30.0,
                            "the resync to undo the hand edit")  # fmt: skip
        assert time.monotonic() - started < 30

        # A spec the operator cannot deploy: an event says why, nothing is touched.
        kube_api.merge_patch(f"{CR_PATH}/demo", {"spec": {"engine": "vllm"}})
        _wait(
            operator,
            kube_api,
            lambda objs: any(
                "spec.engine" in str(o.get("message"))
                for k, o in objs.items()
                if k.startswith("events/")
            ),  # fmt: skip
            "an event naming the bad field",
        )
        assert kube_api.objects()["deployments/tandem/demo-worker"]["spec"]["template"] == worker["spec"]["template"]  # fmt: skip
    finally:
        code = operator.stop()
    log = operator.log_path.read_text()
    assert code == 0, log[-3000:]  # SIGTERM: kopf stops its tasks and the process exits 0
    assert "reconciled tandemdeployment=tandem/demo" in log
