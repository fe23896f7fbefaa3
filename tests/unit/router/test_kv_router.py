from __future__ import annotations

import asyncio

import pytest
from router_fakes import FakeWorkers
from tandem.router.api import NoWorkersError, RouterBusyError
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.runtime import block_hash
from tandem.runtime.block_hash import FIRST_LAZY_BLOCKS, sequence_hashes

BS = 16


def prompt(seed: int, blocks: int) -> list[int]:
    return [seed * 100_000 + i for i in range(blocks * BS)]


def kv_router(workers: FakeWorkers, **overrides) -> KvRouter:
    return KvRouter(RoutingConfig(**overrides), workers)


async def test_routes_to_the_worker_holding_the_prefix():
    workers = FakeWorkers("a", "b", "c")
    router = kv_router(workers)
    tokens = prompt(1, 20)
    router.index.store("b", sequence_hashes(tokens, BS)[:15])
    result = await router.route("r1", tokens)
    assert (result.instance_id, result.overlap_blocks, result.prompt_blocks) == ("b", 15, 20)
    assert router.load.load("b") == (5 * BS, 20)
    router.prefill_done("r1")
    assert router.load.load("b") == (0, 20)
    router.free("r1")
    assert router.load.load("b") == (0, 0)
    assert router.metrics.kv_cache_hit_ratio._value.get() == pytest.approx(0.75)


async def test_identical_flood_spreads_once_the_holder_is_busier_than_the_hit_is_worth():
    workers = FakeWorkers("a", "b", "c")
    router = kv_router(workers)
    tokens = prompt(2, 8)
    router.index.store("a", sequence_hashes(tokens, BS))
    picks = [(await router.route(f"r{i}", tokens)).instance_id for i in range(30)]
    assert picks[0] == "a"
    assert picks.count("a") >= 5
    assert {"b", "c"} <= set(picks)


async def test_only_live_workers_and_worker_removal_drops_state():
    workers = FakeWorkers("a", "b")
    router = kv_router(workers)
    tokens = prompt(3, 4)
    router.index.store("ghost", sequence_hashes(tokens, BS))  # not in etcd
    assert (await router.route("r1", tokens)).instance_id in {"a", "b"}
    router.free("r1")
    router.index.store("a", sequence_hashes(tokens, BS))
    assert (await router.route("r2", tokens)).instance_id == "a"
    workers.remove("a")
    assert router.load.load("a") == (0, 0)
    assert "a" not in router.index.workers
    assert (await router.route("r3", tokens)).instance_id == "b"
    router.free("r2")  # after its worker left: harmless
    workers.remove("b")
    with pytest.raises(NoWorkersError):
        await router.route("r4", tokens)


async def test_busy_workers_are_skipped_then_requests_queue_then_503():
    workers = FakeWorkers("a", "b", total_blocks=100)
    router = kv_router(workers, busy_threshold=0.5, max_queue=1, queue_timeout=5)
    big = prompt(4, 60)  # 60 of 100 blocks: one such request makes a worker busy
    first = await router.route("r1", big)
    second = await router.route("r2", big)
    assert {first.instance_id, second.instance_id} == {"a", "b"}
    waiting = asyncio.create_task(router.route("r3", prompt(5, 2)))
    async with asyncio.timeout(5):
        while router._num_waiting == 0:  # noqa: ASYNC110 - state owned by the code under test
            await asyncio.sleep(0.001)
    with pytest.raises(RouterBusyError):
        await router.route("r4", prompt(6, 2))  # queue (bound 1) is full
    router.free("r1")
    assert (await waiting).instance_id == first.instance_id


async def test_queue_timeout_is_503():
    workers = FakeWorkers("a", total_blocks=10)
    router = kv_router(workers, busy_threshold=0.5, queue_timeout=0.05)
    await router.route("r1", prompt(7, 8))
    with pytest.raises(RouterBusyError):
        await router.route("r2", prompt(8, 1))


async def test_approximate_mode_learns_from_its_own_decisions():
    workers = FakeWorkers("a", "b", "c", "d")
    router = kv_router(workers, kv_events=False)
    tokens = prompt(9, 10)
    first = await router.route("r1", tokens)
    router.free("r1")
    for i in range(5):
        again = await router.route(f"r{i + 2}", tokens)
        assert again.instance_id == first.instance_id
        assert again.overlap_blocks == 10
        router.free(f"r{i + 2}")


async def test_temperature_spreads_choices():
    workers = FakeWorkers("a", "b", "c")
    router = kv_router(workers, router_temperature=5.0)
    tokens = prompt(10, 4)
    router.index.store("a", sequence_hashes(tokens, BS))
    picks = set()
    for i in range(60):
        picks.add((await router.route(f"r{i}", tokens)).instance_id)
        router.free(f"r{i}")
    assert picks == {"a", "b", "c"}


async def test_routing_the_same_request_again_counts_it_once():
    workers = FakeWorkers("a", "b")
    router = kv_router(workers)
    first = await router.route("r1", prompt(11, 4))
    second = await router.route("r1", prompt(11, 4), exclude=[first.instance_id])
    assert second.instance_id != first.instance_id
    assert router.load.load(first.instance_id) == (0, 0)
    router.free("r1")
    assert len(router.load) == 0


async def test_a_prompt_nobody_holds_is_hashed_only_as_far_as_the_walk_reads(monkeypatch):
    workers = FakeWorkers("a", "b")
    router = kv_router(workers)
    cached = prompt(11, 250)
    router.index.store("b", sequence_hashes(cached, BS)[:100])
    chained: list[int] = []  # blocks per call of the chain step
    chain = block_hash._chain

    def counting_chain(local: list[int], parent: int | None, seed: int) -> list[int]:
        chained.append(len(local))
        return chain(local, parent, seed)

    monkeypatch.setattr(block_hash, "_chain", counting_chain)
    cold = await router.route("r1", prompt(12, 250))
    assert (cold.overlap_blocks, cold.prompt_blocks) == (0, 250)
    assert chained == [FIRST_LAZY_BLOCKS]  # the walk ended at the first block
    router.free("r1")
    warm = await router.route("r2", cached)
    assert (warm.instance_id, warm.overlap_blocks, warm.prompt_blocks) == ("b", 100, 250)


async def test_approximate_mode_remembers_every_block_of_a_long_prompt():
    """The prompt's hashes are completed for the prediction even where the walk read few."""
    workers = FakeWorkers("a", "b")
    router = kv_router(workers, kv_events=False)
    tokens = prompt(13, 100)
    first = await router.route("r1", tokens)
    assert first.overlap_blocks == 0
    router.free("r1")
    again = await router.route("r2", tokens)
    assert (again.instance_id, again.overlap_blocks) == (first.instance_id, 100)


# -- KV tiers ------------------------------------------------------------------


async def test_a_prefix_in_host_memory_attracts_the_request_over_a_cold_worker():
    workers = FakeWorkers("cold", "host")
    router = kv_router(workers)
    tokens = prompt(20, 20)
    hashes = sequence_hashes(tokens, BS)
    router.index.store("host", hashes[:4])
    router.index.store("host", hashes[4:16], "host_dram")
    result = await router.route("r1", tokens)
    # The 12 host blocks are copied back, not computed: neither prefill nor a miss.
    assert (result.instance_id, result.overlap_blocks, result.prompt_blocks) == ("host", 16, 20)
    assert router.load.load("host") == (4 * BS, 20)
    router.free("r1")


async def test_a_device_hit_beats_a_host_hit_at_equal_load_and_outlasts_it_under_load():
    workers = FakeWorkers("device", "host", "cold")
    router = kv_router(workers)
    tokens = prompt(21, 10)
    hashes = sequence_hashes(tokens, BS)
    router.index.store("device", hashes)
    router.index.store("host", hashes, "host_dram")
    assert (await router.route("first", tokens)).instance_id == "device"
    router.free("first")
    # Identical requests pile up (none frees): the device holder takes the most, the host
    # holder more than the cold worker, whose turn comes last.
    picks = [(await router.route(f"r{i}", tokens)).instance_id for i in range(40)]
    first = {w: picks.index(w) for w in set(picks)}
    assert first["device"] < first["host"] < first.get("cold", len(picks))
    assert picks.count("device") > picks.count("host") > picks.count("cold")


async def test_disk_blocks_count_after_host_blocks_and_weight_zero_ignores_a_tier():
    workers = FakeWorkers("cold", "disk")
    tokens = prompt(22, 10)
    hashes = sequence_hashes(tokens, BS)
    for weight, expected in ((0.5, "disk"), (0.0, None)):
        router = kv_router(workers, router_disk_cache_hit_weight=weight)
        router.index.store("disk", hashes, "nvme_ssd")
        router.load.add("busy", "disk", 0, 4)  # a little load: a hit worth nothing loses
        result = await router.route("r1", tokens)
        assert result.instance_id == (expected or "cold")
        assert result.overlap_blocks == (10 if expected else 0)
        router.free("r1")


def test_the_tier_weights_are_flags_in_0_to_1():
    from tandem.router.config import RouterConfig
    from tandem.runtime.config import parse_config

    config = parse_config(
        RouterConfig,
        ["--router-host-cache-hit-weight", "0.6", "--router-disk-cache-hit-weight", "0.1"],
    )
    assert (config.router_host_cache_hit_weight, config.router_disk_cache_hit_weight) == (0.6, 0.1)
    for bad in ({"router_host_cache_hit_weight": 1.5}, {"router_disk_cache_hit_weight": -0.1}):
        with pytest.raises(ValueError, match="must be in"):
            RoutingConfig(**bad)  # type: ignore[arg-type]
