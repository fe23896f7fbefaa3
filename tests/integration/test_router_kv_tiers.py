"""KV tiers through real NATS: a worker's publisher reports blocks offloaded to host memory, and
the KV router sends the prefix there rather than to a cold worker."""

from __future__ import annotations

import random

from tandem.launcher.local_infra import LocalInfra
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.worker_view import StaticWorkerView
from tandem.runtime.block_hash import sequence_hashes
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.kv_tiers import HOST_TIER
from tandem.runtime.messaging import Messaging
from tandem.worker.kv_publisher import KvEventPublisher

from tests.support.checks import wait_until

BS = 16


async def test_a_prefix_offloaded_to_host_memory_is_routed_back_to_its_worker(
    infra: LocalInfra, namespace: str
) -> None:
    messaging = Messaging(infra.nats_url, namespace)
    await messaging.connect()
    workers = StaticWorkerView(
        [InstanceInfo(w, "worker", f"{w}:1", block_size=BS) for w in ("cold", "offloaded")]
    )
    publishers = [KvEventPublisher(w, messaging) for w in ("cold", "offloaded")]
    routers: list[KvRouter] = []
    try:
        await messaging.ensure_kv_stream()  # as a worker does before it publishes
        for pub in publishers:
            pub.start()
        tokens = [random.Random(4).randrange(1, 30000) for _ in range(12 * BS)]
        hashes = sequence_hashes(tokens, BS)
        blocks = [(h, i) for i, h in enumerate(hashes)]
        cold, offloaded = publishers
        cold.stored(None, [(h + 1, 0) for h in hashes[:3]])  # something else entirely
        # The prefix was computed on the device, offloaded to host memory as it filled, then
        # evicted from the device by other work.
        offloaded.stored(None, blocks)
        offloaded.stored(None, blocks, HOST_TIER)
        offloaded.removed(hashes)
        for pub in publishers:
            await pub.flush()

        router = KvRouter(RoutingConfig(), workers, messaging=messaging)
        routers.append(router)
        await router.start()  # replays what the stream holds
        await wait_until(
            lambda: router.index.num_worker_blocks("offloaded", HOST_TIER) == 12,
            15,
            "the host-tier events",
        )
        assert router.index.num_worker_blocks("offloaded") == 0
        router.load.add("other", "offloaded", 0, 8)  # busier: without its host blocks, it loses
        result = await router.route("r1", tokens)
        assert (result.instance_id, result.overlap_blocks) == ("offloaded", 12)
        assert router.load.load("offloaded").prefill_tokens == 0  # copied back, not computed
        router.free("r1")

        # Blocks copied back up to the device keep their host copy: counted once, as device.
        offloaded.stored(None, blocks[:4])
        await offloaded.flush()
        await wait_until(
            lambda: router.index.num_worker_blocks("offloaded") == 4, 15, "the onboarded blocks"
        )
        assert router.index.tier_overlaps(hashes) == ({"offloaded": 4}, {"offloaded": 8}, {})
    finally:
        for router in routers:
            await router.stop()
        for pub in publishers:
            await pub.stop()
        await messaging.close()
