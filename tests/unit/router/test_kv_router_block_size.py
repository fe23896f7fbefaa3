"""The kv router hashes prompts with its workers' block size, and refuses workers that differ."""

from __future__ import annotations

import logging

import pytest
from router_fakes import FakeWorkers
from tandem.router.api import NoWorkersError
from tandem.router.config import RoutingConfig
from tandem.router.kv_router import KvRouter
from tandem.runtime.block_hash import sequence_hashes


def prompt(seed: int, num_tokens: int) -> list[int]:
    return [seed * 100_000 + i for i in range(num_tokens)]


def test_the_router_config_has_no_block_size_of_its_own() -> None:
    with pytest.raises(TypeError):
        RoutingConfig(kv_cache_block_size=16)  # type: ignore[call-arg]


async def test_prompts_are_hashed_in_the_workers_blocks() -> None:
    workers = FakeWorkers()
    workers.add("a", block_size=64)
    workers.add("b", block_size=64)
    router = KvRouter(RoutingConfig(), workers)
    tokens = prompt(1, 64 * 10 + 5)
    router.index.store("b", sequence_hashes(tokens, 64)[:8])
    result = await router.route("r1", tokens)
    assert router.block_size == 64
    assert (result.instance_id, result.overlap_blocks, result.prompt_blocks) == ("b", 8, 10)
    # Prefill still to do on b: the prompt minus its 8 cached blocks of 64 tokens.
    assert router.load.load("b") == (len(tokens) - 8 * 64, 11)


async def test_the_block_size_comes_with_the_first_worker_after_the_router_started() -> None:
    workers = FakeWorkers()
    router = KvRouter(RoutingConfig(), workers)
    with pytest.raises(NoWorkersError):
        await router.route("r0", prompt(2, 100))
    workers.add("a", block_size=32)
    tokens = prompt(2, 100)
    router.index.store("a", sequence_hashes(tokens, 32))
    result = await router.route("r1", tokens)
    assert (router.block_size, result.overlap_blocks, result.prompt_blocks) == (32, 3, 3)


async def test_a_worker_with_another_block_size_is_never_routed_to_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    workers = FakeWorkers()
    workers.add("a", block_size=64, model="m")
    router = KvRouter(RoutingConfig(), workers)
    with caplog.at_level(logging.ERROR, logger="tandem.router.kv_router"):
        workers.add("b", block_size=16, model="m")
        workers.add("c", block_size=64, model="m")
    tokens = prompt(3, 64 * 4)
    router.index.store("b", sequence_hashes(tokens, 16))  # b holds it all, in its own blocks
    picks = set()
    for i in range(20):
        picks.add((await router.route(f"r{i}", tokens, max_tokens=64)).instance_id)
    assert picks == {"a", "c"}  # load spreads over both, never onto the idle b
    assert router.block_size == 64
    assert list(router.refused) == ["b"]
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert "16" in refusals[0].getMessage() and "64" in refusals[0].getMessage()
    assert getattr(refusals[0], "instance_id", None) == "b"
    with pytest.raises(NoWorkersError):
        await router.route("rx", tokens, exclude=["a", "c"])


async def test_the_model_takes_the_new_size_once_every_older_worker_left() -> None:
    workers = FakeWorkers()
    workers.add("a", block_size=64)
    workers.add("b", block_size=16)
    router = KvRouter(RoutingConfig(), workers)
    assert (router.block_size, list(router.refused)) == (64, ["b"])
    workers.remove("a")
    assert (router.block_size, router.refused) == (16, {})
    assert (await router.route("r1", prompt(4, 48))).instance_id == "b"


def test_each_model_keeps_its_own_size_under_a_router_of_any_model() -> None:
    workers = FakeWorkers()
    workers.add("a", block_size=64, model="big")
    workers.add("b", block_size=16, model="small")
    workers.add("c", block_size=32, model="small")
    workers.add("d", block_size=0, model="small")
    router = KvRouter(RoutingConfig(), workers)
    assert sorted(router.refused) == ["c", "d"]
