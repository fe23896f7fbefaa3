"""The KV router in-process against real nats + etcd and real mocker worker processes."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from nats.js.api import StreamConfig
from tandem.launcher.local_infra import LocalInfra
from tandem.router.api import BaseRouter
from tandem.router.config import RoutingConfig
from tandem.router.kv_event_follower import REPLAY_MAX_EVENTS
from tandem.router.kv_router import KvRouter
from tandem.runtime import subjects
from tandem.runtime.block_hash import sequence_hashes
from tandem.runtime.discovery import Discovery
from tandem.runtime.instance_set import InstanceSet
from tandem.runtime.messaging import KV_STREAM_MAX_AGE_SECONDS, Messaging
from tandem.runtime.wire import worker_pb2, worker_pb2_grpc

from tests.support.checks import wait_until
from tests.support.processes import ServiceProcess, spawn_mocker_worker, worker_ready

BS = 16


@dataclass
class WorkerProc:
    proc: ServiceProcess
    instance_id: str
    endpoint: str


def spawn_worker(infra: LocalInfra, namespace: str, log_dir: Path, *extra: str) -> ServiceProcess:
    return spawn_mocker_worker(
        infra, namespace, log_dir, "--speedup-ratio", "20", "--load-report-interval", "0.2", *extra
    )


def wait_ready(proc: ServiceProcess) -> WorkerProc:
    instance_id, endpoint, _ = worker_ready(proc)
    return WorkerProc(proc, instance_id, endpoint)


def start_workers(
    infra: LocalInfra, namespace: str, log_dir: Path, n: int, *extra: str
) -> list[WorkerProc]:
    procs = [spawn_worker(infra, namespace, log_dir, *extra) for _ in range(n)]  # start in parallel
    return [wait_ready(p) for p in procs]


def prompt(seed: int, num_blocks: int) -> list[int]:
    return [(seed * 7919 + i) % 30000 + 1 for i in range(num_blocks * BS)]


async def generate(
    endpoint: str,
    token_ids: list[int],
    max_tokens: int = 4,
    on_first: Callable[[], None] | None = None,
) -> None:
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        request = worker_pb2.GenerateRequest(
            request_id=uuid.uuid4().hex,
            token_ids=token_ids,
            sampling=worker_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True),
        )
        first = True
        async for _ in stub.Generate(request):
            if first and on_first is not None:
                on_first()
            first = False


async def serve(router: BaseRouter, token_ids: list[int], max_tokens: int = 4) -> str:
    """Route, stream from the chosen worker, release: what the frontend does."""
    rid = uuid.uuid4().hex
    result = await router.route(rid, token_ids, max_tokens=max_tokens)
    try:
        await generate(
            result.endpoint, token_ids, max_tokens, on_first=lambda: router.prefill_done(rid)
        )
    finally:
        router.free(rid)
    return result.instance_id


@dataclass
class Client:
    messaging: Messaging
    discovery: Discovery
    workers: InstanceSet


@pytest.fixture(scope="module")
def cluster_namespace() -> str:
    return f"r{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def cluster(
    infra: LocalInfra, cluster_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[WorkerProc]]:
    workers = start_workers(infra, cluster_namespace, tmp_path_factory.mktemp("logs"), 3)
    yield workers
    for w in workers:
        w.proc.stop()


@pytest.fixture
async def client(
    infra: LocalInfra, cluster_namespace: str, cluster: list[WorkerProc]
) -> AsyncIterator[Client]:
    messaging = Messaging(infra.nats_url, cluster_namespace)
    await messaging.connect()
    discovery = Discovery(infra.etcd_url, cluster_namespace)
    await discovery.start()
    workers = discovery.instance_set("worker")
    await workers.start()
    await workers.wait_for(lambda d: len(d) >= len(cluster), timeout=30)
    yield Client(messaging, discovery, workers)
    await discovery.close()
    await messaging.close()


async def make_kv_router(
    client: Client, replay_max_events: int | None = None, **overrides: object
) -> KvRouter:
    router = KvRouter(
        RoutingConfig(**overrides),
        client.workers,
        messaging=client.messaging,  # type: ignore[arg-type]
    )
    if replay_max_events is not None:
        assert router.follower is not None
        router.follower.replay_max_events = replay_max_events
    await router.start()
    return router


def holder(router: KvRouter, token_ids: list[int]) -> Callable[[], str | None]:
    hashes = sequence_hashes(token_ids, BS)

    def who() -> str | None:
        full = [w for w, n in router.index.overlaps(hashes).items() if n == len(hashes)]
        return full[0] if len(full) == 1 else None

    return who


async def test_repeated_prompts_go_to_the_worker_that_cached_them(client: Client):
    router = await make_kv_router(client)
    try:
        prompts = [prompt(100 + i, 24) for i in range(3)]
        owners = {}
        for i, p in enumerate(prompts):
            owners[i] = await serve(router, p)
            await wait_until(
                lambda p=p: holder(router, p)() is not None, 15, "the worker's KV events"
            )
            assert holder(router, p)() == owners[i]
        for _ in range(3):
            for i, p in enumerate(prompts):
                rid = uuid.uuid4().hex
                result = await router.route(rid, p)
                assert result.instance_id == owners[i], (
                    {w: router.load.load(w) for w in client.workers.instances},
                    router.load._reported,
                    router.index.overlaps(sequence_hashes(p, BS)),
                )
                assert result.overlap_blocks == result.prompt_blocks == 24
                router.free(rid)
        assert router.metrics.kv_cache_hit_ratio._value.get() > 0.5
        assert router.follower is not None and router.follower.num_applied > 0
    finally:
        await router.stop()


async def test_identical_flood_spreads_once_the_holder_is_busier_than_the_hit_is_worth(
    client: Client,
):
    router = await make_kv_router(client)
    try:
        p = prompt(200, 16)
        owner = await serve(router, p)
        await wait_until(lambda: holder(router, p)() == owner, 15, "the worker's KV events")
        picks = await asyncio.gather(*(serve(router, p, max_tokens=32) for _ in range(40)))
        counts = Counter(picks)
        assert counts[owner] == max(counts.values()), counts  # the hit is worth something...
        assert len(counts) >= 2, counts  # ...but not the whole flood
        assert len(router.load) == 0  # every request released
    finally:
        await router.stop()


async def test_late_router_rebuilds_from_stream_and_worker_snapshots(
    client: Client, infra: LocalInfra
):
    first = await make_kv_router(client)
    p = prompt(300, 20)
    try:
        owner = await serve(first, p)
        await wait_until(lambda: holder(first, p)() == owner, 15, "the worker's KV events")
    finally:
        await first.stop()
    # Replay: a new router rebuilds the index from the JetStream stream before routing.
    late = await make_kv_router(client)
    try:
        assert holder(late, p)() == owner
        rid = uuid.uuid4().hex
        assert (await late.route(rid, p)).instance_id == owner
        late.free(rid)
    finally:
        await late.stop()
    # A stream too long to replay: the router asks each live worker for its blocks instead.
    from_workers = await make_kv_router(client, replay_max_events=0)
    try:
        assert holder(from_workers, p)() == owner
        await serve(from_workers, prompt(350, 2))  # and follows the stream from there
    finally:
        await from_workers.stop()
    # The stream lost its history (the workers were quiet for longer than it keeps events):
    # the starting router asks each live worker, so it knows the prefix before routing.
    await client.messaging.js.purge_stream(subjects.kv_stream(client.messaging.namespace))
    quiet = await make_kv_router(client)
    try:
        assert holder(quiet, p)() == owner
        assert quiet.follower is not None and quiet.follower.num_gaps == 0
    finally:
        await quiet.stop()
    # Events the stream holds from the middle of a worker's history: its next event is a gap,
    # fetched from the worker.
    await client.messaging.js.purge_stream(subjects.kv_stream(client.messaging.namespace))
    workers = list(client.workers.instances.values())
    for i, info in enumerate(workers):
        await generate(info.endpoint, prompt(400 + i, 2))  # a new event from every worker
    stream = subjects.kv_stream(client.messaging.namespace)

    async def stream_holds_them() -> bool:
        return (await client.messaging.js.stream_info(stream)).state.messages >= len(workers)

    await wait_until(stream_holds_them, 15, "the new events in the stream")
    fresh = await make_kv_router(client)
    try:
        assert holder(fresh, p)() == owner
        assert fresh.follower is not None and fresh.follower.num_gaps >= 1
    finally:
        await fresh.stop()


async def test_replicas_share_active_load(client: Client):
    a = await make_kv_router(client)
    b = await make_kv_router(client)
    try:
        p = prompt(500, 8)
        result = await a.route("shared-1", p)
        await wait_until(
            lambda: b.load.get("shared-1") is not None, 5, "replica B to hear of A's request"
        )
        assert b.load.load(result.instance_id).decode_blocks >= 8
        # B now avoids the worker A just loaded for an unrelated request of the same size.
        other = await b.route("shared-2", prompt(501, 8))
        assert other.instance_id != result.instance_id
        a.free("shared-1")
        b.free("shared-2")
        await wait_until(
            lambda: b.load.get("shared-1") is None and a.load.get("shared-2") is None, 5, "frees"
        )
    finally:
        await a.stop()
        await b.stop()


async def test_worker_leaving_etcd_has_its_blocks_dropped(
    client: Client, infra: LocalInfra, cluster_namespace: str, tmp_path: Path
):
    router = await make_kv_router(client)
    extra = wait_ready(spawn_worker(infra, cluster_namespace, tmp_path))
    try:
        await wait_until(
            lambda: extra.instance_id in client.workers.instances, 15, "the new worker in etcd"
        )
        p = prompt(600, 12)
        await generate(extra.endpoint, p)  # cache it there directly
        await wait_until(
            lambda: router.index.num_worker_blocks(extra.instance_id) > 0, 15, "its KV events"
        )
        rid = uuid.uuid4().hex
        assert (await router.route(rid, p)).instance_id == extra.instance_id
        router.free(rid)
        extra.proc.stop()  # SIGTERM: the lease is revoked
        await wait_until(
            lambda: extra.instance_id not in client.workers.instances, 15, "etcd removal"
        )
        assert router.index.num_worker_blocks(extra.instance_id) == 0
        assert (await router.route("after", p)).instance_id != extra.instance_id
        router.free("after")
    finally:
        extra.proc.stop()
        await router.stop()


async def _noop() -> None:  # keeps Awaitable imported for type checkers of helpers above
    await asyncio.sleep(0)


_: Callable[[], Awaitable[None]] = _noop


async def test_approximate_mode_without_kv_events(client: Client):
    router = await make_kv_router(client, kv_events=False)
    try:
        assert router.follower is None
        p = prompt(800, 10)
        owner = await serve(router, p)
        for _ in range(4):  # no events consulted: the router remembers where it sent the prefix
            rid = uuid.uuid4().hex
            result = await router.route(rid, p)
            assert (result.instance_id, result.overlap_blocks) == (owner, 10)
            router.free(rid)
    finally:
        await router.stop()


async def test_the_kv_stream_keeps_as_many_events_as_a_starting_router_replays(
    infra: LocalInfra, namespace: str
) -> None:
    """nats-server holds no history a router would never read (and an index entry for each),
    and only a minute of it: a starting router asks the workers for anything older. A stream
    made with longer limits (an earlier release's hour) takes these."""
    messaging = Messaging(infra.nats_url, namespace)
    await messaging.connect()
    name = subjects.kv_stream(namespace)
    try:
        await messaging.js.add_stream(
            StreamConfig(name=name, subjects=[subjects.kv_subjects_all(namespace)], max_age=3600)
        )
        await messaging.ensure_kv_stream()
        info = await messaging.js.stream_info(name)
        assert info.config.max_msgs == REPLAY_MAX_EVENTS
        assert info.config.max_age == KV_STREAM_MAX_AGE_SECONDS == 60
    finally:
        await messaging.close()
