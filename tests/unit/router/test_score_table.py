"""The kept cost terms choose exactly what scoring every worker from scratch chooses."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection

import pytest
from router_fakes import FakeWorkers
from tandem.router import cost_model
from tandem.router.active_load import METRICS_FRESH_SECONDS, ActiveLoadManager
from tandem.router.api import NoWorkersError
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.router.radix_index import TierOverlaps


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reference_choose(
    router: KvRouter,
    overlaps: TierOverlaps,
    prompt_blocks: int,
    request_blocks: int,
    exclude: Collection[str],
    rng: random.Random,
) -> tuple[str, int] | None:
    """Every worker scored from scratch on every decision (the router's code before the
    kept terms): the definition the table must match, rng draws included."""
    instances = router._workers.instances
    refused = router.refused
    config = router.config
    ids = [
        iid
        for iid, info in instances.items()
        if not info.draining and iid not in exclude and iid not in refused
    ]
    if not ids:
        raise NoWorkersError("none may take it")
    prefills, decodes, used = router.load.loads(ids)
    keep = []
    for i, iid in enumerate(ids):
        total = instances[iid].total_blocks or router.load.total_blocks(iid)
        if total <= 0 or used[i] <= config.busy_threshold * total:
            keep.append(i)
    if not keep:
        return None
    ids = [ids[i] for i in keep]
    prefills = [prefills[i] for i in keep]
    decodes = [decodes[i] for i in keep]
    device, host, disk = overlaps
    held: list[int] = [device.get(iid, 0) for iid in ids]
    credited: list[float] | list[int] = held
    if host or disk:
        more = [(host.get(iid, 0), disk.get(iid, 0)) for iid in ids]
        credited = [
            cost_model.credited_overlap(
                d,
                h,
                k,
                config.router_host_cache_hit_weight,
                config.router_disk_cache_hit_weight,
            )
            for d, (h, k) in zip(held, more, strict=True)
        ]
        held = [d + h + k for d, (h, k) in zip(held, more, strict=True)]
    cost = cost_model.costs(
        credited,
        [cost_model.backlog_tokens(p) for p in prefills],
        decodes,
        prompt_blocks,
        request_blocks,
        router.block_size,
        config.kv_overlap_score_weight,
    )
    best = cost_model.pick(cost, decodes, config.router_temperature, rng)
    return ids[best], held[best]


def random_config(rng: random.Random) -> RoutingConfig:
    return RoutingConfig(
        kv_overlap_score_weight=rng.choice([1.0, 1.0, 0.0, 1.3, 0.7]),
        router_host_cache_hit_weight=rng.choice([0.8, 0.33]),
        router_disk_cache_hit_weight=rng.choice([0.5, 0.1]),
        router_temperature=rng.choice([0.0, 0.0, 0.0, 0.5]),
        busy_threshold=rng.choice([1.0, 1.0, 0.5, 2.0]),
    )


def random_overlaps(rng: random.Random, ids: list[str], prompt_blocks: int) -> TierOverlaps:
    device: dict[str, int] = {}
    host: dict[str, int] = {}
    disk: dict[str, int] = {}
    for iid in [*ids, "ghost"]:  # "ghost": in the index but not (or no longer) registered
        if rng.random() < 0.3:
            device[iid] = rng.randint(1, prompt_blocks)
    if rng.random() < 0.3:
        for iid in rng.sample([*ids, "ghost"], 2):
            left = prompt_blocks - device.get(iid, 0)
            if left > 0:
                host[iid] = rng.randint(1, left)
                if left - host[iid] > 0 and rng.random() < 0.5:
                    disk[iid] = rng.randint(1, left - host[iid])
    return TierOverlaps(device, host, disk)


def mutate(
    rng: random.Random,
    router: KvRouter,
    workers: FakeWorkers,
    clock: Clock,
    live: list[str],
    serial: list[int],
) -> None:
    """One random change of what the router knows: load, reports, time, the worker set."""
    load = router.load
    ids = list(workers.instances)
    op = rng.random()
    if op < 0.3 and ids:
        serial[0] += 1
        rid = f"r{serial[0]}"
        # Few distinct values, so that costs tie often.
        load.add(rid, rng.choice(ids), rng.choice([0, 100, 2048, 3000, 6000]), rng.randint(0, 6))
        live.append(rid)
    elif op < 0.4 and live:
        load.prefill_done(rng.choice(live))
    elif op < 0.55 and live:
        load.free(live.pop(rng.randrange(len(live))))
    elif op < 0.7 and ids:
        load.report(rng.choice(ids), rng.randint(0, 40), rng.choice([0, 3000, 9000]), 30)
    elif op < 0.8:
        clock.now += rng.choice([0.5, 2.0, METRICS_FRESH_SECONDS, 7.0])
    elif op < 0.82:
        clock.now -= 3.0  # a test's clock may go back: stale reports count again
    elif op < 0.88 and ids:
        # Draining, or a new pool size: a new record under the same key, with no callback
        # (as etcd's InstanceSet updates a worker that re-registers).
        iid = rng.choice(ids)
        info = workers.instances[iid]
        workers.instances[iid] = dataclasses.replace(
            info, draining=rng.random() < 0.5, total_blocks=rng.choice([0, 20, 30, 1000])
        )
    elif op < 0.93 and len(ids) < 10:
        serial[0] += 1
        workers.add(f"w{serial[0]}", rng.choice([0, 20, 30]), block_size=rng.choice([16, 16, 32]))
    elif op < 0.97 and len(ids) > 1:
        workers.remove(rng.choice(ids))
    else:
        router.config = random_config(rng)


def test_kept_terms_choose_what_scoring_every_worker_chooses() -> None:
    rng = random.Random(20261202)
    num_decisions = num_tied = num_busy = num_sampled = 0
    for trial in range(40):
        clock = Clock()
        workers = FakeWorkers(*(f"w{i}" for i in range(rng.randint(1, 8))), total_blocks=30)
        router = KvRouter(random_config(rng), workers, rng=random.Random(trial), clock=clock)
        live: list[str] = []
        serial = [100]
        for _ in range(300):
            for _ in range(rng.randint(0, 3)):
                mutate(rng, router, workers, clock, live, serial)
            ids = list(workers.instances)
            if not ids:
                continue
            prompt_blocks = rng.randint(1, 20)
            request_blocks = prompt_blocks + rng.randint(0, 4)
            overlaps = random_overlaps(rng, ids, prompt_blocks)
            exclude = (
                set(rng.sample(ids, min(len(ids), rng.randint(0, 2))))
                if rng.random() < 0.2
                else set()
            )
            rng_before = router._rng.getstate()
            ref_rng = random.Random()
            ref_rng.setstate(rng_before)
            try:
                expected = reference_choose(
                    router, overlaps, prompt_blocks, request_blocks, exclude, ref_rng
                )
            except NoWorkersError:
                with pytest.raises(NoWorkersError):
                    router._choose(overlaps, prompt_blocks, request_blocks, exclude)
                continue
            chosen = router._choose(overlaps, prompt_blocks, request_blocks, exclude)
            got = None if chosen is None else (chosen[0].instance_id, chosen[1])
            assert got == expected
            drew = router._rng.getstate() != rng_before
            assert router._rng.getstate() == ref_rng.getstate()  # the same draws
            num_decisions += 1
            num_busy += got is None
            if router.config.router_temperature > 0:
                num_sampled += 1
            else:
                num_tied += drew  # a tie broken at random
    # The states covered ties (rng drawn), all-busy fleets and sampling, not just easy picks.
    assert num_decisions > 5000
    assert num_busy > 200
    assert num_sampled > 1000
    assert num_tied > 300


def test_a_report_going_stale_is_named_changed_once() -> None:
    clock = Clock()
    load = ActiveLoadManager(clock)
    assert load.take_changed(clock.now) == set()
    load.report("w", active_blocks=10, pending_prefill_tokens=0, total_blocks=100)
    load.add("r", "x", 10, 2)
    assert load.take_changed(clock.now) == {"w", "x"}
    clock.now += METRICS_FRESH_SECONDS
    assert load.take_changed(clock.now) == set()  # still fresh: loads() unchanged
    clock.now += 0.5
    assert load.take_changed(clock.now) == {"w"}  # stale now: loads() no longer counts it
    clock.now += 10
    assert load.take_changed(clock.now) == set()
    clock.now -= 100  # a clock that went back makes it fresh again
    assert load.take_changed(clock.now) == {"w"}


def test_a_worker_that_turns_busy_or_draining_is_skipped_at_once() -> None:
    clock = Clock()
    workers = FakeWorkers("a", "b", total_blocks=10)
    router = KvRouter(RoutingConfig(), workers, rng=random.Random(0), clock=clock)
    overlaps = TierOverlaps({"a": 4}, {}, {})
    chosen = router._choose(overlaps, 4, 5, ())
    assert chosen is not None and chosen[0].instance_id == "a"
    router.load.add("r1", "a", 0, 11)  # a is past its 10 blocks
    chosen = router._choose(overlaps, 4, 5, ())
    assert chosen is not None and chosen[0].instance_id == "b"
    router.load.free("r1")
    workers.instances["a"] = dataclasses.replace(workers.instances["a"], draining=True)
    chosen = router._choose(overlaps, 4, 5, ())
    assert chosen is not None and chosen[0].instance_id == "b"
    workers.instances["b"] = dataclasses.replace(workers.instances["b"], draining=True)
    with pytest.raises(NoWorkersError):
        router._choose(overlaps, 4, 5, ())
