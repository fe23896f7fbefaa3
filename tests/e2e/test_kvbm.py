"""The tiered KV cache across processes: a torch worker restarted on the same
--kvbm-nvme-path announces the blocks it reloaded from disk, and the frontend's router
sends the returning conversation to it rather than to a cold worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from tandem.launcher.local_infra import LocalInfra

from tests.e2e.openai_cluster import MODEL, Cluster, post
from tests.support.checks import metric_value, scrape
from tests.support.processes import ServiceProcess, worker_ready

PROMPT = "The quick brown fox jumps over the lazy dog while the cat sleeps. " * 24


def torch_worker(cluster: Cluster, *extra: str) -> tuple[ServiceProcess, str]:
    proc = ServiceProcess(
        "tandem.worker",
        ["--engine", "torch", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
         "--num-kv-blocks", "64", "--drain-timeout", "0", *cluster.common_flags(), *extra],
        cluster.log_dir,
    )  # fmt: skip
    _, _, metrics = worker_ready(proc, timeout=180)
    return proc, f"http://{metrics}/metrics"


def completion(cluster: Cluster) -> dict[str, object]:
    status, body = post(
        f"{cluster.url}/v1/completions",
        {"model": MODEL, "prompt": PROMPT, "max_tokens": 4, "temperature": 0},
        timeout=120,
    )
    assert status == 200, body
    return body


def kvbm_counter(url: str, name: str, tier: str) -> float:
    return metric_value(scrape(url), f"tandem_kvbm_{name}_total", tier=tier) or 0.0


@pytest.mark.slow
def test_restarted_worker_announces_its_disk_tier_and_is_routed_to(
    infra: LocalInfra, tmp_path: Path
) -> None:
    cluster = Cluster(infra, tmp_path / "logs")
    cluster.log_dir.mkdir()
    tiers = ["--connector", "kvbm", "--kvbm-storage-tiers", "hbm,host_dram,nvme_ssd",
             "--kvbm-nvme-path", str(tmp_path / "nvme"), "--num-host-blocks", "64"]  # fmt: skip
    procs: list[ServiceProcess] = []
    try:
        tiered, tiered_metrics = torch_worker(cluster, *tiers)
        procs.append(tiered)
        cluster.start_frontend(wait_workers=1)
        first = completion(cluster)
        blocks = first["usage"]["prompt_tokens"] // 16  # type: ignore[index]
        tiered.wait_until(
            lambda: kvbm_counter(tiered_metrics, "offloaded_blocks", "nvme_ssd") >= blocks - 1,
            60,
            "the conversation's blocks on disk",
        )
        tiered.stop()
        cold, cold_metrics = torch_worker(cluster)
        procs.append(cold)
        tiered, tiered_metrics = torch_worker(cluster, *tiers)
        procs.append(tiered)
        cluster.wait_workers(2)
        assert "kvbm disk tier reloaded" in tiered.log_text()
        # The router learns the reloaded blocks from the worker's KV events (tier nvme_ssd).
        tiered.wait_until(
            lambda: (
                (metric_value(scrape(f"{cluster.url}/metrics"), "tandem_router_index_blocks") or 0)
                >= blocks - 1
            ),
            30,
            "the frontend's router to index the reloaded disk tier",
        )

        again = completion(cluster)
        assert again["choices"][0]["text"] == first["choices"][0]["text"]  # type: ignore[index]
        cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]  # type: ignore[index]
        assert cached >= (blocks - 1) * 16
        assert kvbm_counter(tiered_metrics, "onboarded_blocks", "nvme_ssd") >= blocks - 1
        assert (metric_value(scrape(cold_metrics), "tandem_worker_prompt_tokens_total") or 0) == 0
    finally:
        cluster.stop()
        for proc in procs:
            proc.stop()
