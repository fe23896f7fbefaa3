"""bench/kvbm.py's configurations, worker flags and table, without a cluster."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from tandem.launcher.trace_summary import ReplayResult
from tandem.worker.__main__ import parse_args as worker_args

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import kvbm  # noqa: E402 - bench/ is not a package


def test_configurations_parse_with_an_offload_ratio() -> None:
    assert kvbm.parse_setup("off") == kvbm.Setup("off")
    setup = kvbm.parse_setup("host+disk@0.7")
    assert (setup.label, setup.host, setup.disk, setup.offload_ratio) == (
        "host+disk@0.7", True, True, 0.7,
    )  # fmt: skip
    for bad in ("off@1", "disk", "host@x"):
        with pytest.raises(ValueError):
            kvbm.parse_setup(bad)


@pytest.mark.parametrize("spec", ["off", "host@1", "host+disk@0"])
def test_every_configuration_is_a_valid_mocker_worker(spec: str, tmp_path: Path) -> None:
    args = kvbm.parse_args(["--host-bandwidth", "20", "--disk-bandwidth", "3"])
    pools = kvbm.Pools(block_size=16, device=100, host=200, disk=800)
    setup = kvbm.parse_setup(spec)
    flags = kvbm.tier_flags(setup, pools, tmp_path, args)
    _, mocker = worker_args([*kvbm.engine_flags(args), *flags])
    assert mocker.num_kv_blocks == 100
    kvbm_config = mocker.kvbm
    assert kvbm_config.has_host == setup.host and kvbm_config.has_disk == setup.disk
    if setup.host:
        assert kvbm_config.host_blocks(100, 1) == 200
        assert kvbm_config.kvbm_offload_ratio == setup.offload_ratio
    if setup.disk:
        assert kvbm_config.disk_blocks(100, 1) == 800
        assert kvbm_config.kvbm_nvme_path == str(tmp_path)


def test_pools_follow_the_working_set_but_hold_the_requests_in_flight() -> None:
    args = kvbm.parse_args([])
    wl = kvbm.Workload(users=80, rounds=10, doc_tokens=3000, concurrency=16)
    pools = kvbm.size_pools(wl, 8, args)
    per_worker = 80 * wl.context_tokens / 8
    assert pools.host * 16 >= 0.5 * per_worker > (pools.host - 1) * 16
    assert pools.device * 16 >= 1.5 * 2 * wl.context_tokens  # 16 streams over 8 workers
    assert kvbm.size_pools(wl, 2, args).device * 16 >= 0.25 * 80 * wl.context_tokens / 2


def test_table_compares_with_off_and_shows_only_the_tiers_a_configuration_has() -> None:
    off = kvbm.Outcome(kvbm.Setup("off"), ReplayResult("off", ok=2, ttft=[0.4, 0.4], wall=1.0,
                                                       output_tokens=10))  # fmt: skip
    host = kvbm.Outcome(
        kvbm.SETUPS["host"],
        ReplayResult("host", ok=2, ttft=[0.1, 0.1], wall=1.0, output_tokens=20),
        {
            ("tandem_kvbm_lookup_blocks_total", ""): 100.0,
            (kvbm.HIT_BLOCKS, "hbm"): 10.0,
            (kvbm.HIT_BLOCKS, "host_dram"): 50.0,
        },
    )
    rows = kvbm.format_rows([off, host]).splitlines()
    assert rows[2].split()[-7:-1] == ["-", "-", "-", "---------", "---------", "-----------"]
    assert rows[3].split()[-7:-1] == ["10.0%", "50.0%", "-", "4.00x", "4.00x", "2.00x"]


def test_repeats_alternate_the_configurations_and_pool_their_figures() -> None:
    order: list[str] = []

    async def run(setup: kvbm.Setup) -> kvbm.Outcome:
        order.append(setup.label)
        metrics = {("tandem_kvbm_lookup_blocks_total", ""): 10.0}
        return kvbm.Outcome(setup, ReplayResult(setup.label, ok=1, ttft=[len(order)]), metrics)

    setups = [kvbm.SETUPS["off"], kvbm.SETUPS["host"]]
    pooled = asyncio.run(kvbm.run_repeated(setups, 2, run))
    assert order == ["off", "host", "off", "host"]
    assert [(o.setup.label, o.result.ok, o.result.ttft, o.runs) for o in pooled] == [
        ("off", 2, [1, 3], 2), ("host", 2, [2, 4], 2),
    ]  # fmt: skip
    assert pooled[1].metrics[("tandem_kvbm_lookup_blocks_total", "")] == 20.0
    assert len(pooled[0].load) == 4
