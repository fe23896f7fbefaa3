"""Two worker processes of eight mocker workers each behind one frontend: routing, and a crash."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.etcd_client import new_etcd_client, normalize_endpoints
from tandem.runtime.keys import instances_prefix

from tests.e2e.openai_cluster import MODEL, Cluster, post
from tests.support.checks import scrape
from tests.support.processes import ServiceProcess, spawn_mocker_worker

PER_PROCESS = 8
_READY = re.compile(r"worker ready instance_id=(\S+) endpoint=\S+ metrics=(\S+)")


@pytest.fixture
def cluster(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(infra, tmp_path_factory.mktemp("fleet"))
    yield cluster
    cluster.stop()


def start_host(cluster: Cluster, prefix: str) -> tuple[ServiceProcess, dict[str, str]]:
    """A worker process hosting PER_PROCESS workers; (process, instance id -> metrics address)."""
    proc = spawn_mocker_worker(
        cluster.infra, cluster.namespace, cluster.log_dir,
        "--num-workers", str(PER_PROCESS), "--instance-id", prefix, "--speedup-ratio", "100",
    )  # fmt: skip
    proc.wait_until(
        lambda: len(_READY.findall(proc.log_text())) == PER_PROCESS, 60, "every hosted worker"
    )
    return proc, dict(_READY.findall(proc.log_text()))


def served(metrics: dict[str, str]) -> dict[str, int]:
    """Requests each worker finished, from its /metrics."""
    counts = {}
    for instance_id, address in metrics.items():
        text = scrape(f"http://{address}/metrics")
        found = re.findall(r"^tandem_worker_requests_total\{[^}]*\} (\S+)", text, re.M)
        counts[instance_id] = int(sum(float(v) for v in found))
    return counts


def registered(cluster: Cluster) -> list[str]:
    async def read() -> list[str]:
        client = new_etcd_client(normalize_endpoints(cluster.infra.etcd_url))
        await client.connect()
        prefix = instances_prefix(cluster.namespace, "worker")
        resp = await client.kv.get(prefix, range_end=prefix[:-1] + "0")  # type: ignore[union-attr]
        await client.close()
        return sorted(kv.key.decode()[len(prefix) :] for kv in resp.kvs)

    return asyncio.run(read())


def complete(cluster: Cluster, prompt: list[int]) -> dict[str, object]:
    status, body = post(
        f"{cluster.url}/v1/completions",
        {"model": MODEL, "prompt": prompt, "max_tokens": 4, "ignore_eos": True},
    )
    assert status == 200, body
    return body


def prompt_of(group: int) -> list[int]:
    return [(group * 1009 + i * 7919) % 30_000 + 1 for i in range(16 * 12)]  # 12 full blocks


def test_two_processes_of_eight_route_hit_the_cache_and_a_crash_removes_exactly_its_workers(
    cluster: Cluster,
) -> None:
    a, metrics_a = start_host(cluster, "pa")
    b, metrics_b = start_host(cluster, "pb")
    cluster.workers = []  # stopped below, not by the cluster
    try:
        cluster.start_frontend(wait_workers=2 * PER_PROCESS)
        assert registered(cluster) == sorted([*metrics_a, *metrics_b])

        # 24 distinct prompts at once spread over the workers...
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(lambda g: complete(cluster, prompt_of(g)), range(24)))
        counts = served({**metrics_a, **metrics_b})
        assert sum(counts.values()) == 24
        assert sum(1 for n in counts.values() if n) >= 4, counts
        # ...and each one again finds its prefix where the kv router sent it.
        again = [complete(cluster, prompt_of(g)) for g in range(6)]
        assert all(r["usage"]["prompt_tokens_details"]["cached_tokens"] > 0 for r in again)  # type: ignore[index]

        a.kill()  # no chance to revoke its lease: its workers leave when it expires
        cluster.wait_workers(PER_PROCESS, timeout=40)
        assert registered(cluster) == sorted(metrics_b)
        before = served(metrics_b)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda g: complete(cluster, prompt_of(100 + g)), range(16)))
        after = served(metrics_b)
        assert sum(after.values()) - sum(before.values()) == 16  # every one on a survivor
        assert b.is_alive()
    finally:
        a.stop()
        b.stop()
