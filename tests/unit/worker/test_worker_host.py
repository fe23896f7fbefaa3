"""One process hosting several workers (`--num-workers`): ids, ports, a shared lease, and the rules."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from tandem.launcher.local_infra import LocalInfra, free_port
from tandem.launcher.up import UpConfig
from tandem.runtime.etcd_client import new_etcd_client, normalize_endpoints
from tandem.runtime.keys import instances_prefix
from tandem.runtime.messaging import Messaging
from tandem.runtime.wire import kv_events_pb2, worker_pb2, worker_pb2_grpc
from tandem.worker.__main__ import parse_args
from tandem.worker.config import WorkerConfig
from tandem.worker.host import WorkerHost
from tandem.worker.mocker import MockerConfig

from tests.support.checks import wait_until


def test_hosted_workers_get_numbered_ids_and_counted_up_ports() -> None:
    config = WorkerConfig(instance_id="w", num_workers=3, port=7000, metrics_port=0)
    assert config.instance_ids == ["w-0", "w-1", "w-2"]
    assert [config.port_of(i) for i in range(3)] == [7000, 7001, 7002]
    assert [config.metrics_port_of(i) for i in range(3)] == [0, 0, 0]  # each a free port
    assert WorkerConfig(instance_id="solo").instance_ids == ["solo"]  # one worker: the id itself
    with pytest.raises(ValueError, match="num_workers"):
        WorkerConfig(num_workers=0)


def test_torch_refuses_more_than_one_worker_per_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--engine", "torch", "--num-workers", "2"])
    err = capsys.readouterr().err
    assert "--num-workers 2: the torch engine runs one worker per process" in err
    worker, _ = parse_args(["--engine", "mocker", "--num-workers", "2"])
    assert worker.num_workers == 2


def test_tandem_up_packs_mocker_workers_into_one_process_per_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tandem.launcher.up.usable_cpus", lambda: 2)
    assert UpConfig(engine="mocker", workers=200).worker_processes() == [100, 100]
    assert UpConfig(engine="mocker", workers=3).worker_processes() == [2, 1]
    packed = UpConfig(engine="mocker", workers=10, workers_per_process=4)
    assert packed.worker_processes() == [4, 3, 3]  # as even as the limit allows
    assert UpConfig(engine="torch", workers=3).worker_processes() == [1, 1, 1]
    planned = UpConfig(engine="mocker", workers=4, planner=True, max_workers=8)
    assert planned.worker_processes() == [1, 1, 1, 1]  # the planner scales processes
    with pytest.raises(ValueError, match="torch engine runs one worker per process"):
        UpConfig(engine="torch", workers_per_process=2)
    with pytest.raises(ValueError, match="with --planner every process hosts one worker"):
        UpConfig(engine="mocker", workers_per_process=2, planner=True)


async def test_host_serves_each_worker_on_its_own_endpoint_under_one_lease(
    infra: LocalInfra,
) -> None:
    namespace = f"h{uuid.uuid4().hex[:10]}"
    config = WorkerConfig(
        engine="mocker", nats=infra.nats_url, etcd=infra.etcd_url, namespace=namespace,
        host="127.0.0.1", instance_id="host", num_workers=3, load_report_interval=0.2,
    )  # fmt: skip
    host = WorkerHost(config, MockerConfig(speedup_ratio=100.0))
    listener = Messaging(infra.nats_url, namespace)
    await listener.connect()
    kv_from: set[str] = set()
    load_from: set[str] = set()

    async def on_kv(event: kv_events_pb2.KvEvent, _seq: int) -> None:
        kv_from.add(event.instance_id)

    async def on_load(metrics: kv_events_pb2.LoadMetrics) -> None:
        load_from.add(metrics.instance_id)

    await listener.subscribe_kv_events(on_kv)
    await listener.subscribe_load(on_load)
    etcd = new_etcd_client(normalize_endpoints(infra.etcd_url))
    await etcd.connect()
    prefix = instances_prefix(namespace, "worker")

    async def registered() -> dict[str, int]:
        resp = await etcd.kv.get(prefix, range_end=prefix[:-1] + "0")  # type: ignore[union-attr]
        return {kv.key.decode()[len(prefix) :]: kv.lease for kv in resp.kvs}

    try:
        endpoints = await host.start()
        assert len({e.grpc for e in endpoints}) == 3
        leases = await registered()
        assert sorted(leases) == ["host-0", "host-1", "host-2"]
        assert len(set(leases.values())) == 1  # one lease for the process

        for endpoint, instance_id in zip(endpoints, config.instance_ids, strict=True):
            async with grpc.aio.insecure_channel(endpoint.grpc) as channel:
                stub = worker_pb2_grpc.WorkerStub(channel)
                health = await stub.Health(worker_pb2.HealthRequest())
                assert (health.ready, health.instance_id) == (True, instance_id)
        # A request on worker 1 only: its KV events name it, and no other worker.
        async with grpc.aio.insecure_channel(endpoints[1].grpc) as channel:
            request = worker_pb2.GenerateRequest(
                request_id="r", token_ids=list(range(1, 65)),
                sampling=worker_pb2.SamplingParams(max_tokens=4),
            )  # fmt: skip
            outs = [r async for r in worker_pb2_grpc.WorkerStub(channel).Generate(request)]
        assert sum(len(r.token_ids) for r in outs) == 4
        await wait_until(lambda: "host-1" in kv_from, 10, "KV events of host-1")
        assert kv_from == {"host-1"}
        await wait_until(lambda: len(load_from) == 3, 10, "load reports of every worker")
    finally:
        await host.stop()
    assert await registered() == {}  # the revoked lease took every worker out at once
    await etcd.close()
    await listener.close()


async def test_a_worker_that_cannot_bind_stops_the_whole_host(infra: LocalInfra) -> None:
    namespace = f"h{uuid.uuid4().hex[:10]}"
    port = free_port()
    config = WorkerConfig(
        engine="mocker", nats=infra.nats_url, etcd=infra.etcd_url, namespace=namespace,
        host="127.0.0.1", port=port, num_workers=2,
    )  # fmt: skip
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port + 1)
    host = WorkerHost(config, MockerConfig())
    try:
        with pytest.raises(Exception, match=f"127.0.0.1:{port + 1}"):
            await host.start()
    finally:
        await host.stop()
        blocker.close()
