"""Workers with 64-token KV blocks behind the frontend's kv router, all as real processes.

The router has no block size of its own: it hashes prompts with the workers',
so a repeated long prompt is a prefix hit; a worker of the same model with
another block size cannot start.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tandem.launcher.local_infra import LocalInfra
from tandem.runtime.startup import EXIT_CANNOT_START

from tests.e2e.openai_cluster import MODEL, Cluster, post
from tests.support.checks import scrape
from tests.support.processes import spawn_mocker_worker

BLOCK = 64
PROMPT_BLOCKS = 20


@pytest.fixture(scope="module")
def cluster(infra: LocalInfra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(infra, tmp_path_factory.mktemp("block-size-logs"))
    try:
        c.start_workers(3, 100.0, "--kv-cache-block-size", str(BLOCK))
        c.start_frontend(wait_workers=3)  # the default router: kv
        yield c
    finally:
        c.stop()


def router_metric(cluster: Cluster, name: str) -> float:
    for family in text_string_to_metric_families(scrape(f"{cluster.url}/metrics")):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not on the frontend's /metrics")


def complete(cluster: Cluster, prompt: list[int]) -> dict[str, object]:
    status, body = post(
        f"{cluster.url}/v1/completions",
        {"model": MODEL, "prompt": prompt, "max_tokens": 2, "ignore_eos": True},
    )
    assert status == 200, body
    return body


def test_a_repeated_long_prompt_hits_the_prefix_cache_in_the_workers_blocks(
    cluster: Cluster,
) -> None:
    prompt = [(i * 7919) % 30_000 + 1 for i in range(BLOCK * PROMPT_BLOCKS + 10)]
    first = complete(cluster, prompt)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # type: ignore[index]
    assert cluster.frontend is not None
    cluster.frontend.wait_until(
        lambda: router_metric(cluster, "tandem_router_index_blocks") >= PROMPT_BLOCKS,
        30,
        "the router to index the first prompt's blocks",
    )
    overlap_before = router_metric(cluster, "tandem_router_overlap_blocks_total")
    again = complete(cluster, prompt)
    # The router saw the whole prompt cached (in 64-token blocks) and sent it there...
    assert router_metric(cluster, "tandem_router_overlap_blocks_total") - overlap_before == (
        PROMPT_BLOCKS
    )
    # ...and the worker served it from its prefix cache.
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]  # type: ignore[index]
    assert cached == BLOCK * PROMPT_BLOCKS


def test_a_worker_of_the_model_with_another_block_size_cannot_start(cluster: Cluster) -> None:
    other = spawn_mocker_worker(
        cluster.infra, cluster.namespace, cluster.log_dir, "--kv-cache-block-size", "16"
    )
    assert other.proc.wait(120) == EXIT_CANNOT_START, other.log_text()
    out = other.log_text()
    other.stop()
    assert f"is served with KV blocks of {BLOCK} tokens" in out, out
    assert "--kv-cache-block-size is 16" in out, out
    assert cluster.health()["models"][MODEL] == 3
