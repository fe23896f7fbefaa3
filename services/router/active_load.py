"""Per-worker active load as the router sees it: what it (and its replicas) sent, not yet done.

Counts are changed only by add / prefill_done / free (and a worker leaving);
nothing else - no health check, no metrics message - resets them. Workers'
published LoadMetrics add what the routers do not know about (work sent by
others, or counted too low): the part of a report above the router's own
count at receipt. Reports lag, so one that was taken before a request
finished would show phantom load; only an excess seen in two consecutive
reports counts (the smaller of the two), and only while fresh.

The router keeps each worker's cost-model terms between decisions instead of
recomputing them for every worker on every decision (score_table.py): it
asks `take_changed` which workers' `loads()` may differ from what it last
read, i.e. those whose counts or reports changed and those whose report went
stale since (time alone changes a worker's load).

Two views of decode load, for two questions. Compute: every active
sequence reads all its blocks each step, shared or not, so the cost model
uses the per-request sum. Memory (the busy threshold): shared prefix blocks
are stored once, so `used_blocks` starts from the worker's own count of
referenced blocks and adds what the router sent or freed since that report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple

METRICS_FRESH_SECONDS = 5.0
"""A worker's last LoadMetrics counts for this long."""
REMOTE_ENTRY_TTL_SECONDS = 600.0
"""A request another router added but never freed (it died) stops counting after this."""
LOCAL_ENTRY_TTL_SECONDS = 3600.0
"""A request of ours never freed (e.g. a frontend of the standalone router died) after this."""


@dataclass(slots=True)
class ActiveRequest:
    instance_id: str
    prefill_tokens: int
    decode_blocks: int
    is_local: bool
    added_at: float
    is_prefilled: bool = False


class WorkerLoad(NamedTuple):
    prefill_tokens: int
    decode_blocks: int


class ReportedLoad(NamedTuple):
    """What a worker reported beyond the router's own count (smaller of its last two reports)."""

    extra_prefill_tokens: int
    extra_decode_blocks: int
    total_blocks: int
    received_at: float
    last_extra_prefill_tokens: int
    last_extra_decode_blocks: int
    active_blocks: int
    counted_decode_blocks: int


class ActiveLoadManager:
    """Owns the active requests per worker and the workers' last reported load."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, ActiveRequest] = {}
        self._prefill: dict[str, int] = {}
        self._decode: dict[str, int] = {}
        self._reported: dict[str, ReportedLoad] = {}
        self._num_remote = 0
        self._last_expiry = float("-inf")
        self._changed: set[str] = set()  # workers whose loads() may differ since take_changed
        self._oldest_fresh = float("inf")  # received_at of the oldest report fresh at last look
        self._last_taken = float("-inf")  # the clock at the last take_changed
        self.on_release: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._requests)

    def get(self, request_id: str) -> ActiveRequest | None:
        return self._requests.get(request_id)

    def add(
        self,
        request_id: str,
        instance_id: str,
        prefill_tokens: int,
        decode_blocks: int,
        *,
        is_local: bool = True,
    ) -> bool:
        """Count a request on a worker; False (and nothing changes) if already counted."""
        if request_id in self._requests:
            return False
        self._requests[request_id] = ActiveRequest(
            instance_id, prefill_tokens, decode_blocks, is_local, self._clock()
        )
        self._prefill[instance_id] = self._prefill.get(instance_id, 0) + prefill_tokens
        self._decode[instance_id] = self._decode.get(instance_id, 0) + decode_blocks
        self._changed.add(instance_id)
        if not is_local:
            self._num_remote += 1
        return True

    def prefill_done(self, request_id: str) -> ActiveRequest | None:
        req = self._requests.get(request_id)
        if req is None or req.is_prefilled:
            return None
        req.is_prefilled = True
        self._prefill[req.instance_id] -= req.prefill_tokens
        self._changed.add(req.instance_id)
        self._notify()
        return req

    def free(self, request_id: str) -> ActiveRequest | None:
        req = self._requests.pop(request_id, None)
        if req is None:
            return None
        if not req.is_prefilled:
            self._prefill[req.instance_id] -= req.prefill_tokens
        self._decode[req.instance_id] -= req.decode_blocks
        self._changed.add(req.instance_id)
        if not req.is_local:
            self._num_remote -= 1
        self._notify()
        return req

    def remove_worker(self, instance_id: str) -> None:
        """The worker left: forget its requests (their free() later is a no-op)."""
        for rid in [r for r, req in self._requests.items() if req.instance_id == instance_id]:
            self.free(rid)
        self._prefill.pop(instance_id, None)
        self._decode.pop(instance_id, None)
        self._reported.pop(instance_id, None)
        self._changed.add(instance_id)

    def report(
        self, instance_id: str, active_blocks: int, pending_prefill_tokens: int, total_blocks: int
    ) -> None:
        """The worker's own view (LoadMetrics)."""
        extra_prefill = max(0, pending_prefill_tokens - self._prefill.get(instance_id, 0))
        extra_decode = max(0, active_blocks - self._decode.get(instance_id, 0))
        prev = self._reported.get(instance_id)
        now = self._clock()
        self._reported[instance_id] = ReportedLoad(
            min(extra_prefill, prev.last_extra_prefill_tokens) if prev else 0,
            min(extra_decode, prev.last_extra_decode_blocks) if prev else 0,
            total_blocks,
            now,
            extra_prefill,
            extra_decode,
            active_blocks,
            self._decode.get(instance_id, 0),
        )
        self._changed.add(instance_id)
        self._oldest_fresh = min(self._oldest_fresh, now)
        self._notify()

    def load(self, instance_id: str) -> WorkerLoad:
        """Counted load plus what the worker's fresh reports show beyond it."""
        prefill = self._prefill.get(instance_id, 0)
        decode = self._decode.get(instance_id, 0)
        rep = self._reported.get(instance_id)
        if rep is not None and self._clock() - rep.received_at <= METRICS_FRESH_SECONDS:
            prefill += rep.extra_prefill_tokens
            decode += rep.extra_decode_blocks
        return WorkerLoad(prefill, decode)

    def used_blocks(self, instance_id: str) -> int:
        """KV blocks in use on the worker (shared ones once), for the busy threshold."""
        decode = self._decode.get(instance_id, 0)
        rep = self._reported.get(instance_id)
        if rep is not None and self._clock() - rep.received_at <= METRICS_FRESH_SECONDS:
            return max(0, rep.active_blocks + decode - rep.counted_decode_blocks)
        return decode

    def loads(
        self, instance_ids: Iterable[str], now: float | None = None
    ) -> tuple[list[int], list[int], list[int]]:
        """`load()` and `used_blocks()` of many workers at once (`now`: the clock's reading
        to judge reports' freshness by, read here if not given)."""
        ids = instance_ids if isinstance(instance_ids, list) else list(instance_ids)
        prefills = list(map(self._prefill.get, ids, repeat(0)))
        decodes = list(map(self._decode.get, ids, repeat(0)))
        used = decodes.copy()
        if not self._reported:
            return prefills, decodes, used
        if now is None:
            now = self._clock()
        for i, rep in enumerate(map(self._reported.get, ids)):
            if rep is not None and now - rep.received_at <= METRICS_FRESH_SECONDS:
                used[i] = max(0, rep.active_blocks + decodes[i] - rep.counted_decode_blocks)
                prefills[i] += rep.extra_prefill_tokens
                decodes[i] += rep.extra_decode_blocks
        return prefills, decodes, used

    def take_changed(self, now: float) -> set[str]:
        """Workers whose `loads(..., now)` may differ from what it gave at the previous call:
        counts or reports changed, or a report went stale (for one reader: the router).

        Found without looking at every worker: a report can only have gone stale if the
        oldest one still fresh at the last look has; a clock that went back (a test's) may
        make stale reports fresh again, so it counts every reported worker."""
        changed = self._changed
        self._changed = set()
        if now < self._last_taken or now - self._oldest_fresh > METRICS_FRESH_SECONDS:
            went_back = now < self._last_taken
            oldest = float("inf")
            for iid, rep in self._reported.items():
                if now - rep.received_at > METRICS_FRESH_SECONDS:
                    changed.add(iid)
                else:
                    oldest = min(oldest, rep.received_at)
                    if went_back:
                        changed.add(iid)
            self._oldest_fresh = oldest
        self._last_taken = now
        return changed

    def total_blocks(self, instance_id: str) -> int:
        rep = self._reported.get(instance_id)
        return rep.total_blocks if rep is not None else 0

    def expire(self) -> int:
        """Drop requests nobody will free: replicas' after REMOTE_ENTRY_TTL_SECONDS (their router
        died), ours after LOCAL_ENTRY_TTL_SECONDS (the caller died). Cheap to call often."""
        now = self._clock()
        if not self._requests or now - self._last_expiry < REMOTE_ENTRY_TTL_SECONDS / 10:
            return 0
        self._last_expiry = now
        remote_cutoff = now - REMOTE_ENTRY_TTL_SECONDS
        local_cutoff = now - LOCAL_ENTRY_TTL_SECONDS
        stale = [
            rid
            for rid, req in self._requests.items()
            if req.added_at < (local_cutoff if req.is_local else remote_cutoff)
        ]
        for rid in stale:
            self.free(rid)
        return len(stale)

    def _notify(self) -> None:
        if self.on_release is not None:
            self.on_release()
