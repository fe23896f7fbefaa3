"""A simulated worker's KV events reach the router's index in every tier, in order."""

from __future__ import annotations

import asyncio
import contextlib

from tandem.launcher.sim_worker import IndexFeed
from tandem.router.radix_index import RadixIndex
from tandem.runtime.kv_tiers import HOST_TIER

from tests.support.checks import wait_until


async def test_the_feed_applies_each_tier_to_its_own_bits() -> None:
    index = RadixIndex()
    feed = IndexFeed(index, "w1")
    task = asyncio.create_task(feed.run())
    try:
        feed.stored(None, [(1, 1), (2, 2), (3, 3)])
        feed.stored(None, [(1, 1), (2, 2), (3, 3)], HOST_TIER)  # offloaded
        feed.removed([3])
        feed.removed([2])  # coalesced with the removal before: the same tier
        feed.removed([1], HOST_TIER)  # not coalesced: another tier
        await wait_until(
            lambda: index.num_worker_blocks("w1", HOST_TIER) == 2, 5, "the last removal applied"
        )
        assert index.worker_blocks("w1") == {1}
        assert index.tier_overlaps([1, 2, 3]) == ({"w1": 1}, {"w1": 2}, {})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
