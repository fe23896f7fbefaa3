from __future__ import annotations

from tandem.router.active_load import (
    LOCAL_ENTRY_TTL_SECONDS,
    METRICS_FRESH_SECONDS,
    REMOTE_ENTRY_TTL_SECONDS,
    ActiveLoadManager,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_add_prefill_done_free_are_idempotent():
    load = ActiveLoadManager()
    assert load.add("r1", "w", prefill_tokens=100, decode_blocks=7)
    assert not load.add("r1", "w", 100, 7)
    assert load.load("w") == (100, 7)
    load.prefill_done("r1")
    load.prefill_done("r1")
    assert load.load("w") == (0, 7)
    load.free("r1")
    load.free("r1")
    load.free("never-seen")
    assert load.load("w") == (0, 0)


def test_free_before_prefill_done_releases_both():
    load = ActiveLoadManager()
    load.add("r1", "w", 50, 4)
    load.free("r1")  # client went away before the first token
    assert load.load("w") == (0, 0)


def test_reports_add_load_the_router_does_not_know_but_never_reset_counts():
    clock = Clock()
    load = ActiveLoadManager(clock)
    load.add("r1", "w", 10, 5)
    load.report("w", active_blocks=40, pending_prefill_tokens=10, total_blocks=100)
    assert load.load("w") == (10, 5)  # one report could be stale: not trusted yet
    load.report("w", active_blocks=45, pending_prefill_tokens=0, total_blocks=100)
    assert load.load("w") == (10, 40)  # 35+ blocks beyond ours in two reports running
    assert load.loads(["w", "x"]) == ([10, 0], [40, 0], [45, 0])
    load.report(
        "w", active_blocks=0, pending_prefill_tokens=0, total_blocks=100
    )  # e.g. a restart/health reply
    assert load.load("w") == (10, 5)
    load.report("w", 40, 0, 100)
    load.report("w", 40, 0, 100)
    clock.now += METRICS_FRESH_SECONDS + 1
    assert load.load("w") == (10, 5)
    assert load.total_blocks("w") == 100


def test_a_stale_report_after_free_is_not_phantom_load():
    load = ActiveLoadManager()
    load.add("r1", "w", 384, 24)
    load.report("w", active_blocks=24, pending_prefill_tokens=384, total_blocks=100)
    load.free("r1")
    load.report(
        "w", active_blocks=24, pending_prefill_tokens=384, total_blocks=100
    )  # taken before the free
    assert load.load("w") == (0, 0)


def test_remote_entries_expire_and_worker_removal_forgets():
    clock = Clock()
    load = ActiveLoadManager(clock)
    load.add("r1", "w", 10, 5, is_local=False)
    load.add("r2", "w", 10, 5)
    clock.now += REMOTE_ENTRY_TTL_SECONDS + 1
    assert load.expire() == 1
    assert load.expire() == 0  # rate-limited, and r2 is ours: kept far longer
    assert load.load("w") == (10, 5)
    clock.now += LOCAL_ENTRY_TTL_SECONDS
    assert load.expire() == 1
    assert load.load("w") == (0, 0)
    load.add("r3", "w", 10, 5)
    load.remove_worker("w")
    assert load.load("w") == (0, 0)
    assert load.get("r3") is None


def test_used_blocks_count_shared_blocks_once_and_follow_the_router_between_reports():
    load = ActiveLoadManager()
    for i in range(4):  # four requests sharing one 100-block prompt
        load.add(f"r{i}", "w", 0, 100)
    assert load.used_blocks("w") == 400  # no report yet: the router's own sum
    load.report("w", active_blocks=110, pending_prefill_tokens=0, total_blocks=1000)
    assert load.used_blocks("w") == 110
    load.add("r9", "w", 0, 50)  # sent since the report
    assert load.used_blocks("w") == 160
    for i in range(4):
        load.free(f"r{i}")
    assert load.used_blocks("w") == 0  # 110 + (50 - 400), floored


def test_loads_of_many_workers_equal_load_and_used_blocks_of_each():
    """The batched hot path agrees with the per-worker definitions, with and without reports,
    fresh or stale, for workers with nothing counted, and for any iterable of ids."""
    clock = Clock()
    load = ActiveLoadManager(clock)
    ids = [f"w{i}" for i in range(8)]
    for i, iid in enumerate(ids[:6]):
        load.add(f"r{i}", iid, prefill_tokens=10 * i, decode_blocks=3 * i + 1)

    def expected() -> tuple[list[int], list[int], list[int]]:
        per = [(load.load(i), load.used_blocks(i)) for i in ids]
        return [p for (p, _), _ in per], [d for (_, d), _ in per], [u for _, u in per]

    assert load.loads(ids) == expected()
    for i, iid in enumerate(ids[1:7]):
        load.report(iid, active_blocks=5 * i, pending_prefill_tokens=40 * i, total_blocks=99)
        load.report(iid, active_blocks=6 * i, pending_prefill_tokens=30 * i, total_blocks=99)
    assert load.loads(ids) == expected()
    assert load.loads(iter(ids)) == expected()
    clock.now += METRICS_FRESH_SECONDS / 2
    load.report("w1", active_blocks=50, pending_prefill_tokens=0, total_blocks=99)
    clock.now += METRICS_FRESH_SECONDS / 2 + 1  # only w1's last report is still fresh
    assert load.loads(ids) == expected()
