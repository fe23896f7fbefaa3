"""The fleet simulator on hand-made traces: its clock is the step-time model's, the router and
the workers are wired as they are live, and a seeded run repeats exactly."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest
from tandem.launcher.fleet_config import FleetConfig
from tandem.launcher.fleet_sim import simulate
from tandem.launcher.mooncake_trace import TraceRecord, prompt_token_ids
from tandem.launcher.sim_loop import run_simulated
from tandem.launcher.sim_worker import SimWorker
from tandem.router.config import RoutingConfig
from tandem.router.radix_index import RadixIndex
from tandem.runtime.block_hash import sequence_hashes
from tandem.runtime.wire.kv_events_pb2 import LoadMetrics
from tandem.worker.engine import EngineRequest, SamplingConfig
from tandem.worker.kvbm.config import KvbmConfig
from tandem.worker.mocker import MockerConfig
from tandem.worker.mocker.sequence import MockSequence

BLOCK_TOKENS = 32  # trace block; the mocker's KV blocks hold 16 tokens
MOCKER = MockerConfig()


def record(at_s: float, hash_ids: tuple[int, ...], input_length: int, output: int) -> TraceRecord:
    return TraceRecord(at_s * 1000.0, input_length, output, hash_ids)


def fleet(workers: int = 1, **routing: object) -> FleetConfig:
    return FleetConfig(
        workers=workers,
        block_tokens=BLOCK_TOKENS,
        routing=RoutingConfig(**routing),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("prompt_tokens", [1000, 10_000])
def test_one_request_takes_the_step_time_models_prefill_and_decode_steps(
    prompt_tokens: int,
) -> None:
    hash_ids = tuple(range(-(-prompt_tokens // BLOCK_TOKENS)))
    result = simulate([record(0.0, hash_ids, prompt_tokens, 3)], fleet())

    # Prefill in chunks of the step's token budget, then one decode step per further token.
    budget = MOCKER.scheduler.max_num_batched_tokens
    chunks = [min(budget, prompt_tokens - start) for start in range(0, prompt_tokens, budget)]
    prefill = sum(MOCKER.step_seconds(n, 0, 0) for n in chunks)
    decodes = [MOCKER.step_seconds(0, 1, prompt_tokens + k) for k in (1, 2)]
    assert result.ttft == [pytest.approx(prefill)]
    assert result.itl == [pytest.approx(d) for d in decodes]
    assert result.wall == pytest.approx(prefill + sum(decodes))
    assert (result.sent, result.ok, result.output_tokens) == (1, 1, 3)
    assert (result.prompt_tokens, result.cached_tokens) == (prompt_tokens, 0)


def shared_prefix_trace() -> list[TraceRecord]:
    """Six requests 10 s apart: 64 shared tokens (4 KV blocks), then 10 of their own."""
    return [record(10.0 * i, (0, 1, 100 + i), 74, 2) for i in range(6)]


def test_shared_prefixes_hit_on_the_worker_the_kv_router_keeps_them_on() -> None:
    kv = simulate(shared_prefix_trace(), fleet(4))
    round_robin = simulate(shared_prefix_trace(), fleet(4, router_mode="round-robin"))

    # kv: requests 2-6 go where the prefix is; each finds its 4 full shared blocks.
    assert kv.cached_tokens == 5 * 64
    assert kv.cached_fraction == pytest.approx(320 / 444)
    # round-robin over 4 workers: only requests 5 and 6 come back to a worker holding it.
    assert round_robin.cached_tokens == 2 * 64
    # A hit skips the prefill of the cached tokens, so the first token comes sooner.
    assert max(kv.ttft[1:]) < kv.ttft[0]


def bursty_trace() -> list[TraceRecord]:
    """40 requests 30 ms apart in 5 prefix groups, long enough to queue behind each other."""
    return [
        record(0.03 * i, (i % 5, 10 + i % 5, 1000 + i), 2000 + 37 * i, 4 + i % 7) for i in range(40)
    ]


def test_the_same_seed_gives_the_same_figures() -> None:
    config = fleet(3, router_temperature=0.2)  # the router samples: its rng is seeded too
    first = simulate(bursty_trace(), config)
    again = simulate(bursty_trace(), config)
    assert first == again
    assert first.ok == 40 and first.cached_tokens > 0
    other = simulate(bursty_trace(), dataclasses.replace(config, seed=1))
    assert other.ttft != first.ttft


def test_a_request_waits_in_the_routers_queue_until_a_worker_has_room() -> None:
    # A busy threshold this low makes the one worker busy while it holds any request.
    trace = [record(0.0, (1, 2), 64, 5), record(0.0, (7, 8), 64, 5)]
    result = simulate(trace, fleet(busy_threshold=1e-4))

    first_done = result.ttft[0] + sum(result.itl[:4])
    assert result.ttft[1] == pytest.approx(first_done + MOCKER.step_seconds(64, 0, 0))
    assert result.ok == 2


def test_the_routers_queue_timeout_runs_on_simulated_time() -> None:
    trace = [record(0.0, (1, 2), 64, 200), record(0.0, (7, 8), 64, 5)]
    result = simulate(trace, fleet(busy_threshold=1e-4, queue_timeout=0.5))
    assert result.ok == 1
    assert dict(result.errors) == {"router RouterBusyError": 1}


def test_a_prompt_beyond_the_context_length_is_refused_and_counted() -> None:
    config = dataclasses.replace(fleet(), mocker=MockerConfig(context_length=1000))
    result = simulate([record(0.0, (1, 2, 3, 4), 1000, 5), record(1.0, (5,), 20, 2)], config)
    assert dict(result.errors) == {"refused ContextLengthError": 1}
    assert (result.sent, result.ok) == (2, 1)


def test_a_workers_index_entries_follow_its_cache_through_evictions() -> None:
    """KV events reach the index as they do live: after the run it holds what the worker holds."""
    config = MockerConfig(num_kv_blocks=64)  # 1024 tokens: the prompts below evict each other
    index = RadixIndex()
    reports: list[tuple[float, LoadMetrics]] = []

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        finished = 0

        def on_output(seq: MockSequence, now: float) -> None:
            nonlocal finished
            finished += seq.is_finished
            if finished == 8:
                done.set()

        worker = SimWorker(
            "w0", config, on_output, index=index,
            on_load=lambda m: reports.append((loop.time(), m)), load_report_interval=1.0,
        )  # fmt: skip
        worker.start()
        for i in range(8):
            prompt = prompt_token_ids(record(0, (i, 50 + i), 400, 1), BLOCK_TOKENS // 2)
            sampling = SamplingConfig(max_tokens=20, ignore_eos=True)
            worker.submit(EngineRequest(f"r{i}", prompt, sampling), random.Random(i))
            await asyncio.sleep(0.5)
        await done.wait()
        await asyncio.sleep(2.5)  # idle: heartbeats only
        resident = worker.engine.scheduler.block_manager.resident_hashes()
        await worker.stop()
        return resident

    resident = run_simulated(main())
    assert index.worker_blocks("w0") == set(resident)
    assert 0 < len(resident) <= 64
    # Load reports: when requests start and end, and otherwise every interval (after the
    # reporter's 50 ms rate limit), as the worker's own LoadReporter sends them.
    times = [t for t, _ in reports]
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= 1.05 + 1e-6
    assert len(times) > 8
    assert reports[-1][1].num_running == 0 and reports[-1][1].active_blocks == 0
    # The index is what the router looks up a prompt in.
    last = prompt_token_ids(record(0, (7, 57), 400, 1), BLOCK_TOKENS // 2)
    assert index.overlaps(sequence_hashes(last, 16)).get("w0", 0) > 0


def test_make_router_hands_the_kv_router_the_simulated_clock() -> None:
    from tandem.launcher.sim_worker import worker_info
    from tandem.router.kv_router import KvRouter
    from tandem.router.policy_registry import RouterDeps, make_router
    from tandem.router.worker_view import StaticWorkerView

    view = StaticWorkerView([worker_info("w0", MOCKER)])
    router = make_router(RoutingConfig(), view, RouterDeps(clock=lambda: 1234.5))
    assert isinstance(router, KvRouter)
    router.load.add("r0", "w0", 10, 2)
    request = router.load.get("r0")
    assert request is not None and request.added_at == 1234.5


def test_kvbm_tiers_are_refused_not_silently_left_out() -> None:
    # The simulated workers run no KVBM: a run asked for one must not print figures without it.
    mocker = MockerConfig(kvbm=KvbmConfig(connector="kvbm"))
    with pytest.raises(ValueError, match="does not simulate the KVBM tiers"):
        FleetConfig(mocker=mocker)
