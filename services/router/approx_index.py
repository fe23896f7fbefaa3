"""Predicted caches for engines that publish no KV events (--no-kv-events).

The router inserts each routing decision's blocks into a RadixIndex as if
the worker had cached them, and forgets them after `ttl` seconds unless a
later decision refreshed them: a guess at what an LRU cache still holds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

from .radix_index import RadixIndex


class ApproxIndex:
    """Owns the expiry time of every (worker, block) the router predicted."""

    def __init__(
        self, index: RadixIndex, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.index = index
        self.ttl = ttl
        self._clock = clock
        self._expiry: dict[tuple[str, int], float] = {}
        self._queue: deque[tuple[float, str, Sequence[int]]] = deque()

    def __len__(self) -> int:
        return len(self._expiry)

    def insert(self, instance_id: str, block_hashes: Sequence[int]) -> None:
        """`instance_id` was sent these blocks: count them as cached there for `ttl`."""
        if not block_hashes:
            return
        expires = self._clock() + self.ttl
        for h in block_hashes:
            self._expiry[(instance_id, h)] = expires
        self.index.store(instance_id, block_hashes)
        self._queue.append((expires, instance_id, block_hashes))

    def expire(self) -> int:
        """Remove blocks whose TTL passed and were not refreshed; returns how many."""
        now = self._clock()
        removed = 0
        while self._queue and self._queue[0][0] <= now:
            expires, instance_id, hashes = self._queue.popleft()
            gone = []
            for h in hashes:
                key = (instance_id, h)
                if self._expiry.get(key, now + 1) <= now:
                    del self._expiry[key]
                    gone.append(h)
            self.index.remove(instance_id, gone)
            removed += len(gone)
        return removed

    def remove_worker(self, instance_id: str) -> None:
        for key in [k for k in self._expiry if k[0] == instance_id]:
            del self._expiry[key]
        self.index.remove_worker(instance_id)
