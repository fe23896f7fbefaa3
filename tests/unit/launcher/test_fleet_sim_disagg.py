"""The fleet simulator's disaggregated pools and closed loop: the frontend's rule decides, the
prefill worker computes the prompt, the transfer takes its simulated time, the decode worker
decodes; a seeded run repeats exactly."""

from __future__ import annotations

import dataclasses

import pytest
from tandem.launcher.fleet_config import FleetConfig
from tandem.launcher.fleet_sim import FleetSimulation, run_fleet
from tandem.launcher.mooncake_trace import TraceRecord
from tandem.router.config import RoutingConfig
from tandem.worker.mocker import MockerConfig

BLOCK_TOKENS = 16  # trace blocks as long as the mocker's KV blocks
MOCKER = MockerConfig(kv_transfer_bandwidth=1.0)  # 1 GB/s: a 3,000-token prompt's KV takes 0.39 s


def record(at_s: float, first_hash: int, input_length: int, output: int = 4) -> TraceRecord:
    """A prompt of its own: hash ids from `first_hash` on (distinct ranges, distinct prompts)."""
    blocks = tuple(range(first_hash, first_hash + -(-input_length // BLOCK_TOKENS)))
    return TraceRecord(at_s * 1000.0, input_length, output, blocks)


def split(prefill: int = 1, decode: int = 1, **options: object) -> FleetConfig:
    return FleetConfig(
        prefill_workers=prefill,
        decode_workers=decode,
        block_tokens=BLOCK_TOKENS,
        mocker=MOCKER,
        **options,  # type: ignore[arg-type]
    )


def prefill_seconds(prompt_tokens: int) -> float:
    """The step-time model's prefill of a whole uncached prompt, chunk by chunk."""
    budget = MOCKER.scheduler.max_num_batched_tokens
    return sum(
        MOCKER.step_seconds(min(budget, prompt_tokens - start), 0, 0)
        for start in range(0, prompt_tokens, budget)
    )


def assert_nothing_held(sim: FleetSimulation) -> None:
    """Every request ended: no sequence parked or pinned, no block in use on any worker."""
    assert sim.disagg is not None
    for worker in [*sim.workers.values(), *sim.disagg.workers.values()]:
        sched = worker.engine.scheduler
        assert not (sched.running or sched.waiting or sched.parked or sched.pinned)
        assert sched.block_manager.num_active_blocks == 0
    assert sim.disagg.num_queued == 0


def test_long_prompts_are_prefilled_on_the_prefill_worker_and_short_ones_locally() -> None:
    lengths = [3000, 200, 2500, 100, 1001, 1000]  # the rule: remote above 1000 uncached tokens
    trace = [record(2.0 * i, 1000 * i, n) for i, n in enumerate(lengths)]
    sim = run_fleet(trace, split())

    assert sim.disagg is not None
    assert sim.disagg.decisions == {"remote:long_prompt": 3, "local:short_prompt": 3}
    # The decode worker computed only the short prompts; the prefill worker only the long ones.
    assert sim.workers["d0"].num_prefill_tokens == 200 + 100 + 1000
    assert sim.disagg.workers["p0"].num_prefill_tokens == 3000 + 2500 + 1001
    assert (sim.result.ok, sim.result.num_errors) == (6, 0)
    assert_nothing_held(sim)


def test_a_remote_prompts_first_token_comes_after_its_prefill_and_its_transfer() -> None:
    sim = run_fleet([record(0.0, 0, 3000, output=3)], split())

    assert sim.disagg is not None
    blocks = -(-3000 // MOCKER.scheduler.kv_cache_block_size)
    transfer = blocks * MOCKER.scheduler.kv_cache_block_size * MOCKER.kv_bytes_per_token / 1e9
    assert transfer > 0.3  # bytes / 1 GB/s: most of the TTFT
    assert sim.result.ttft == [pytest.approx(prefill_seconds(3000) + transfer)]
    assert sim.disagg.transfer_seconds == pytest.approx(transfer)
    assert sim.disagg.transfer_bytes == blocks * 16 * MOCKER.kv_bytes_per_token
    # The decode worker did not compute the prompt (nothing cached there either): it decodes.
    assert sim.workers["d0"].num_prefill_tokens == 0
    assert (sim.result.prompt_tokens, sim.result.cached_tokens) == (3000, 0)
    assert sim.result.itl == [pytest.approx(MOCKER.step_seconds(0, 1, 3000 + k)) for k in (1, 2)]
    assert_nothing_held(sim)


def test_a_full_prefill_queue_keeps_long_prompts_local() -> None:
    trace = [record(0.0, 1000 * i, 3000) for i in range(5)]  # all at once
    sim = run_fleet(trace, split(max_prefill_queue_size=2))

    assert sim.disagg is not None
    assert sim.disagg.decisions == {"remote:long_prompt": 2, "local:queue_full": 3}
    assert sim.workers["d0"].num_prefill_tokens == 3 * 3000
    assert sim.disagg.workers["p0"].num_prefill_tokens == 2 * 3000
    assert sim.result.ok == 5
    assert_nothing_held(sim)


def test_a_long_prompt_the_decode_worker_received_before_is_cached_there() -> None:
    # The second request repeats the first one's prompt once it is done: its blocks reached
    # the decode worker by transfer, so the router's index finds them there.
    trace = [record(0.0, 0, 3000), record(5.0, 0, 3000)]
    sim = run_fleet(trace, split())

    assert sim.disagg is not None
    assert sim.disagg.decisions == {"remote:long_prompt": 1, "local:prefix_cached": 1}
    assert sim.result.cached_tokens == 3000 // 16 * 16  # its full blocks; the last 8 computed
    assert sim.workers["d0"].num_prefill_tokens == 3000 - sim.result.cached_tokens


def mixed_trace(n: int) -> list[TraceRecord]:
    return [record(0.0, 1000 * i, 200 if i % 2 else 3000, output=20 + i % 7) for i in range(n)]


def test_the_same_seed_gives_the_same_figures_closed_loop() -> None:
    # Both routers sample (their rngs are seeded too): another seed routes differently.
    config = split(1, 2, concurrency=6, ramp_up=0.3, routing=RoutingConfig(router_temperature=0.5))
    first, again = run_fleet(mixed_trace(40), config), run_fleet(mixed_trace(40), config)

    assert first.result == again.result
    assert first.timings == again.timings
    assert first.disagg is not None and again.disagg is not None
    assert first.disagg.decisions == again.disagg.decisions
    assert first.disagg.decisions == {"remote:long_prompt": 20, "local:short_prompt": 20}
    assert (first.result.ok, first.result.num_errors) == (40, 0)
    assert_nothing_held(first)
    other = run_fleet(mixed_trace(40), dataclasses.replace(config, seed=1))
    assert other.result.itl != first.result.itl


def test_a_closed_loop_sends_each_streams_next_request_when_its_last_one_ends() -> None:
    # Timestamps 1000 s apart are ignored: one stream sends three requests back to back.
    trace = [record(1000.0 * i, 1000 * i, 500, output=3) for i in range(3)]
    alone = run_fleet(trace[:1], FleetConfig(workers=1, block_tokens=BLOCK_TOKENS))
    result = run_fleet(
        trace, FleetConfig(workers=1, block_tokens=BLOCK_TOKENS, concurrency=1)
    ).result

    assert result.ttft == [pytest.approx(alone.result.ttft[0])] * 3
    assert result.wall == pytest.approx(3 * alone.result.wall)
    assert result.ok == 3


@pytest.mark.parametrize(
    "options",
    [
        {"prefill_workers": 1},
        {"decode_workers": 2},
        {"prefill_workers": -1, "decode_workers": 1},
        {"prefill_workers": 1, "decode_workers": 1, "max_prefill_queue_size": -1},
        {"concurrency": -1},
    ],
)
def test_a_fleet_config_with_half_a_layout_or_a_bad_knob_is_refused(
    options: dict[str, int],
) -> None:
    with pytest.raises(ValueError):
        FleetConfig(**options)  # type: ignore[arg-type]
