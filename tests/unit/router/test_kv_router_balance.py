"""Uniform load: with nothing to share, the kv policy must spread requests as evenly as
round-robin, also once the workers' LoadMetrics reports come in."""

from __future__ import annotations

from collections import Counter

from router_fakes import FakeWorkers
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.runtime.block_hash import sequence_hashes
from tandem.runtime.wire.kv_events_pb2 import LoadMetrics

BS = 16
PROMPT_TOKENS = 26  # a short chat prompt: two blocks
MAX_TOKENS = 128
WORKERS = [f"w{i}" for i in range(8)]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def short_prompt(n: int) -> list[int]:
    return [n * 1000 + k for k in range(PROMPT_TOKENS)]


async def route_many(router: KvRouter, first: int, count: int) -> Counter[str]:
    chosen: Counter[str] = Counter()
    for n in range(first, first + count):
        result = await router.route(f"r{n}", short_prompt(n), max_tokens=MAX_TOKENS)
        chosen[result.instance_id] += 1
    return chosen


async def report(router: KvRouter, instance_id: str, active_blocks: int) -> None:
    await router._on_load(
        LoadMetrics(instance_id=instance_id, active_blocks=active_blocks, total_blocks=100_000)
    )


async def test_equal_requests_on_idle_workers_spread_evenly():
    router = KvRouter(RoutingConfig(), FakeWorkers(*WORKERS, total_blocks=100_000), clock=Clock())
    chosen = await route_many(router, 0, 256)
    assert sorted(chosen.values()) == [32] * 8


async def test_reports_of_decoding_requests_do_not_unbalance_new_ones():
    """In a closed loop the workers' requests are at different points of their decode. Each
    worker reports the blocks its requests hold by now (prompt and output so far), twice, as
    its reporter does; the requests routed next must still spread evenly, since every
    worker runs as many requests of the same size. Counting only prompt blocks as a
    request's decode load made the output blocks look like load the router did not send,
    so the workers furthest into their decode got almost nothing."""
    clock = Clock()
    router = KvRouter(RoutingConfig(), FakeWorkers(*WORKERS, total_blocks=100_000), clock=clock)
    assert sorted((await route_many(router, 0, 256)).values()) == [32] * 8
    for n in range(256):
        router.prefill_done(f"r{n}")
    for _ in range(2):
        clock.now += 0.05
        for k, iid in enumerate(WORKERS):
            generated = 16 * k  # worker k's requests are k blocks into their output
            await report(router, iid, 32 * -(-(PROMPT_TOKENS + generated) // BS))
    chosen = await route_many(router, 256, 64)
    assert max(chosen.values()) - min(chosen[iid] for iid in WORKERS) <= 1, chosen


async def test_requests_that_replace_finished_ones_go_back_to_their_worker():
    """Closed loop: the requests of one engine step finish together and their streams send
    the next ones at once. On equal workers they belong on the worker that freed the room,
    prefilled in one step there, not scattered over every worker (a prefill step each)."""
    router = KvRouter(RoutingConfig(), FakeWorkers(*WORKERS, total_blocks=100_000), clock=Clock())
    assert sorted((await route_many(router, 0, 256)).values()) == [32] * 8
    for n in range(256):
        router.prefill_done(f"r{n}")
    finished = [f"r{n}" for n in range(256) if router.load.get(f"r{n}").instance_id == "w3"]
    for rid in finished[:8]:
        router.free(rid)
    assert await route_many(router, 256, 8) == {"w3": 8}


async def test_a_nearly_full_worker_keeps_the_requests_whose_prefix_it_holds():
    """Memory-tight workers: a conversation's worker is often nearly full with that
    conversation's own blocks when its next turn comes. By default a worker below its
    full pool still takes it (the engine admits it there), instead of sending the turn
    to an idle worker to recompute the prefix; 0.95 sent it away at 96 % usage."""
    router = KvRouter(RoutingConfig(), FakeWorkers("a", "b", total_blocks=1000), clock=Clock())
    turn = [7_000 + k for k in range(40 * BS)]
    router.index.store("a", sequence_hashes(turn, BS))
    await router._on_load(LoadMetrics(instance_id="a", active_blocks=960, total_blocks=1000))
    assert (await router.route("r", turn + [1, 2, 3], max_tokens=32)).instance_id == "a"
