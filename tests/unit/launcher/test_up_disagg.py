"""`tandem up --prefill-workers P --decode-workers D`: the pools, their roles and the rule's flags."""

from __future__ import annotations

import os

import pytest
from tandem.launcher.up import UpConfig, worker_argv, worker_stop_seconds
from tandem.worker.__main__ import parse_args


@pytest.fixture(autouse=True)
def _no_tandem_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TANDEM_"):
            monkeypatch.delenv(name)


def test_prefill_and_decode_pools_replace_the_aggregated_one() -> None:
    up = UpConfig(engine="mocker", prefill_workers=3, decode_workers=5, workers_per_process=2)
    assert up.pools() == [("prefill", 3), ("decode", 5)]
    assert up.num_workers == 8
    assert up.worker_processes(3) == [2, 1] and up.worker_processes(5) == [2, 2, 1]
    config, _ = parse_args(worker_argv(up.worker_config(role="decode"), []))
    assert config.disaggregation_mode == "decode"
    assert UpConfig(engine="mocker").pools() == [("aggregated", 2)]


def test_the_frontend_gets_the_rule_flags() -> None:
    up = UpConfig(prefill_workers=1, decode_workers=1, max_local_prefill_length=2048,
                  max_prefill_queue_size=4)  # fmt: skip
    frontend = up.frontend_config()
    assert (frontend.max_local_prefill_length, frontend.max_prefill_queue_size) == (2048, 4)


@pytest.mark.parametrize(
    "kwargs",
    [{"prefill_workers": 2}, {"decode_workers": 2},
     {"prefill_workers": 3, "decode_workers": 2, "planner": True, "max_workers": 4}],
)  # fmt: skip
def test_half_a_split_or_pools_past_the_planners_budget_are_refused(
    kwargs: dict[str, object],
) -> None:
    with pytest.raises(ValueError):
        UpConfig(**kwargs)  # type: ignore[arg-type]


def test_the_planner_of_a_split_sizes_each_pool_within_the_budget() -> None:
    up = UpConfig(engine="mocker", prefill_workers=1, decode_workers=2, planner=True,
                  max_workers=5)  # fmt: skip
    planner = up.planner_config("m")
    assert (planner.min_prefill_workers, planner.max_prefill_workers) == (1, 4)
    assert (planner.min_decode_workers, planner.max_decode_workers) == (1, 4)
    assert (planner.min_workers, planner.max_workers) == (2, 5)


def test_a_workers_stop_grace_covers_its_drain() -> None:
    up = UpConfig(engine="mocker")
    argv = worker_argv(up.worker_config(), ["--drain-timeout", "30", "--num-kv-blocks", "64"])
    assert worker_stop_seconds(argv) == 30 + 10
