"""The planner's kubernetes connector against a real HTTP server speaking the Deployment scale API.

The server (`tests/support/kube_api.py`) runs in its own process; the
connector reaches it through a kubeconfig with a bearer token, with the
official `kubernetes` client, as it would reach a cluster's API server.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.planner.kubernetes_connector import (
    KubernetesConnector,
    KubernetesConnectorConfig,
    PoolFollower,
)
from tandem.planner.target import ReplicaTarget, TargetStore
from tandem.runtime import kube_client
from tandem.runtime.discovery import Discovery
from tandem.runtime.instance_info import InstanceInfo, Role
from tandem.runtime.messaging import Messaging
from tandem.runtime.prefill_queue import PrefillQueue
from tandem.runtime.startup import StartupError
from tandem.runtime.wire.kv_events_pb2 import LoadMetrics

from tests.support.checks import wait_until
from tests.support.kube_api import KubeApiProcess
from tests.support.processes import ServiceProcess, infra_flags

TOKEN = "test-token-7f3a"
SCALE = "/apis/apps/v1/namespaces/tandem/deployments/demo-worker/scale"


@pytest.fixture
def kube_api(tmp_path: Path) -> Iterator[KubeApiProcess]:
    api = KubeApiProcess.start(tmp_path, token=TOKEN, deployments=["tandem/demo-worker=1"],
                               context_namespace="tandem")  # fmt: skip
    yield api
    api.stop()


def _config(api: KubeApiProcess, **overrides: str) -> KubernetesConnectorConfig:
    fields = {
        "kubernetes_deployment": "demo-worker",
        "kubeconfig": str(api.kubeconfig),
        **overrides,
    }
    return KubernetesConnectorConfig(**fields)


async def test_scale_to_patches_the_scale_subresource(kube_api: KubeApiProcess) -> None:
    connector = await KubernetesConnector.connect(_config(kube_api))
    try:
        assert connector.namespace == "tandem"  # the kubeconfig context's namespace
        assert await connector.replicas() == 1
        await connector.scale_to(3, "test: up")
        assert kube_api.replicas("tandem", "demo-worker") == 3
        assert await connector.replicas() == 3
        served = len(kube_api.requests())
        await connector.scale_to(3, "test: unchanged")  # already there: a read, no write
    finally:
        await connector.close()
    requests = kube_api.requests()
    patches = [r for r in requests if r["method"] == "PATCH"]
    assert len(patches) == 1
    assert patches[0]["path"] == SCALE
    assert patches[0]["content_type"].startswith("application/merge-patch+json")
    assert patches[0]["query"].get("fieldManager") == "tandem-planner"
    assert all(r["path"] == SCALE for r in requests)  # the scale subresource only
    assert [r["method"] for r in requests[served:]] == ["GET"]


async def test_wrong_token_is_retried_and_never_scales(tmp_path: Path) -> None:
    api = KubeApiProcess.start(tmp_path, token=TOKEN, deployments=["tandem/demo-worker=1"],
                               client_token="not-the-token")  # fmt: skip
    try:
        config = KubernetesConnectorConfig(kubernetes_deployment="demo-worker",
                                           kubernetes_namespace="tandem",
                                           kubeconfig=str(api.kubeconfig))  # fmt: skip
        connector = await KubernetesConnector.connect(config)
        try:
            task = asyncio.create_task(connector.scale_to(4, "test"))
            await wait_until(lambda: len(api.requests()) >= 2, 15, "two refused attempts")
            assert not task.done()  # still retrying: a target is never dropped
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await connector.close()
        assert api.replicas("tandem", "demo-worker") == 1
        assert all(r["method"] == "GET" for r in api.requests())  # refused before any write
    finally:
        api.stop()


async def test_missing_deployment_is_retried_until_it_exists(kube_api: KubeApiProcess) -> None:
    connector = await KubernetesConnector.connect(_config(kube_api, kubernetes_deployment="late"))
    try:
        task = asyncio.create_task(connector.scale_to(2, "test"))
        await wait_until(
            lambda: any(r["path"].endswith("/late/scale") for r in kube_api.requests()),
            15,
            "the connector to try the absent Deployment",
        )
        assert not task.done()
        kube_api.create("tandem", "late", 1)
        await asyncio.wait_for(task, 30)
        assert kube_api.replicas("tandem", "late") == 2
    finally:
        await connector.close()


async def test_explicit_namespace_wins_over_the_context(kube_api: KubeApiProcess) -> None:
    kube_api.create("other", "demo-worker", 1)
    connector = await KubernetesConnector.connect(_config(kube_api, kubernetes_namespace="other"))
    try:
        await connector.scale_to(5, "test")
    finally:
        await connector.close()
    assert kube_api.replicas("other", "demo-worker") == 5
    assert kube_api.replicas("tandem", "demo-worker") == 1


async def test_a_disaggregated_target_scales_each_pools_deployment(
    kube_api: KubeApiProcess,
) -> None:
    kube_api.create("tandem", "llm-prefill", 1)
    kube_api.create("tandem", "llm-decode", 1)
    config = KubernetesConnectorConfig(
        kubeconfig=str(kube_api.kubeconfig),
        kubernetes_pool_deployment=["prefill=llm-prefill", "decode=llm-decode"],
    )
    connection = await kube_client.connect(config.kubeconfig)
    follower = PoolFollower(connection.api_client, connection.namespace, config)
    try:
        await follower.apply(ReplicaTarget("m", 5, "test", time.time(), pools={"prefill": 2, "decode": 3}))  # fmt: skip
    finally:
        await follower.close()
    assert kube_api.replicas("tandem", "llm-prefill") == 2
    assert kube_api.replicas("tandem", "llm-decode") == 3
    assert kube_api.replicas("tandem", "demo-worker") == 1  # not named: untouched


def test_malformed_pool_deployments_are_refused() -> None:
    with pytest.raises(ValueError, match="role=deployment"):
        KubernetesConnectorConfig(kubernetes_pool_deployment=["prefill"])
    with pytest.raises(ValueError, match="each role once"):
        KubernetesConnectorConfig(kubernetes_pool_deployment=["decode=a", "decode=b"])


async def test_no_credentials_is_a_startup_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(StartupError, match="no Kubernetes credentials"):
        await KubernetesConnector.connect(
            KubernetesConnectorConfig(kubernetes_deployment="w", kubeconfig=str(missing))
        )


async def test_planner_process_scales_the_deployment_to_its_target(
    kube_api: KubeApiProcess, infra: LocalInfra, namespace: str, log_dir: Path
) -> None:
    """`tandem planner --connector kubernetes`: a target written to etcd becomes the replicas."""
    model = "k8s-connector-model"
    kube_api.create("tandem", "demo-worker", 3)
    discovery = Discovery(infra.etcd_url, namespace)
    await discovery.start()
    planner = ServiceProcess(
        "tandem.planner",
        [*infra_flags(infra, namespace), "--model", model, "--connector", "kubernetes",
         "--kubernetes-deployment", "demo-worker", "--kubeconfig", str(kube_api.kubeconfig),
         "--adjustment-interval", "60"],
        log_dir,
    )  # fmt: skip
    try:
        planner.wait_log("planner ready", timeout=60)
        # Its own first decision: no workers registered, so the floor (--min-workers 1).
        await wait_until(lambda: kube_api.replicas("tandem", "demo-worker") == 1, 30,
                         "the planner's own target on the Deployment")  # fmt: skip
        store = TargetStore(discovery.client, namespace)
        for replicas in (4, 2):
            await store.write(ReplicaTarget(model, replicas, "test target", time.time()))
            await wait_until(lambda r=replicas: kube_api.replicas("tandem", "demo-worker") == r,
                             30, f"the Deployment at {replicas} replicas")  # fmt: skip
        assert "kubernetes scaled deployment=tandem/demo-worker replicas=4->2" in planner.log_text()
    finally:
        assert planner.stop() == 0
        await discovery.close()


def test_connector_kubernetes_without_a_deployment_is_a_usage_error(log_dir: Path) -> None:
    proc = ServiceProcess("tandem.planner", ["--connector", "kubernetes"], log_dir)
    assert proc.proc.wait(30) == 2
    assert "--connector kubernetes needs --kubernetes-deployment" in proc.log_text()
    proc.stop()


async def test_load_mode_planner_scales_each_pools_deployment_on_its_own_load(
    kube_api: KubeApiProcess, infra: LocalInfra, namespace: str, log_dir: Path
) -> None:
    """Disaggregated, --mode load: decode grows on KV usage, prefill on the prefill queue,
    each through its own Deployment."""
    model = "k8s-pools-model"
    kube_api.create("tandem", "llm-prefill", 1)
    kube_api.create("tandem", "llm-decode", 1)
    discovery = Discovery(infra.etcd_url, namespace)
    messaging = Messaging(infra.nats_url, namespace)
    await discovery.start()
    await messaging.connect()
    active = {"d1": 95}  # of 100 blocks: 0.95 > --scale-up-kv-usage 0.8

    async def register(instance_id: str, role: Role) -> None:
        await discovery.register_instance(
            InstanceInfo(instance_id, "worker", "127.0.0.1:1", model=model, role=role,
                         total_blocks=100, started_at=time.time())
        )  # fmt: skip

    async def report_forever() -> None:
        while True:
            for instance_id, blocks in list(active.items()):
                await messaging.publish_load(
                    LoadMetrics(instance_id=instance_id, total_blocks=100, active_blocks=blocks,
                                timestamp=time.time())
                )  # fmt: skip
            await asyncio.sleep(0.1)

    reporter = asyncio.create_task(report_forever())
    await register("p1", "prefill")
    await register("d1", "decode")
    planner = ServiceProcess(
        "tandem.planner",
        [*infra_flags(infra, namespace), "--model", model, "--connector", "kubernetes",
         "--kubernetes-pool-deployment", "prefill=llm-prefill,decode=llm-decode",
         "--kubeconfig", str(kube_api.kubeconfig), "--adjustment-interval", "0.3",
         "--max-workers", "4"],
        log_dir,
    )  # fmt: skip
    try:
        await wait_until(lambda: kube_api.replicas("tandem", "llm-decode") == 2, 30,
                         "the decode Deployment at 2 replicas")  # fmt: skip
        assert kube_api.replicas("tandem", "llm-prefill") == 1  # its queue is empty
        # The new decode worker serves and the load spreads; prompts queue up for prefill.
        await register("d2", "decode")
        active.update(d1=40, d2=40)
        queue = PrefillQueue(messaging)
        for i in range(5):  # 5 jobs on one prefill worker: above 2.0 a worker
            await queue.publish(model, "p1", f"job {i}".encode())
        await wait_until(lambda: kube_api.replicas("tandem", "llm-prefill") == 2, 30,
                         "the prefill Deployment at 2 replicas")  # fmt: skip
        assert kube_api.replicas("tandem", "llm-decode") == 2
        log = planner.log_text()
        assert re.search(r"scaling \S+ decode pool up: 1 -> 2 workers", log), log[-3000:]
        assert re.search(r"scaling \S+ prefill pool up: 1 -> 2 workers .*prefill_queue=5", log)
        assert "kubernetes scaled deployment=tandem/llm-prefill replicas=1->2" in log
    finally:
        reporter.cancel()
        assert planner.stop() == 0, planner.log_text()[-3000:]
        await messaging.close()
        await discovery.close()
