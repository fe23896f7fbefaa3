"""The `kv` policy: route to the worker where serving the request costs least.

Wires the parts together: RadixIndex (fed by KvEventFollower, or by the
router's own decisions through ApproxIndex with --no-kv-events),
ActiveLoadManager (corrected by LoadMetrics, shared with replicas through
LoadSharing), the cost model (over per-worker terms kept between decisions:
ScoreTable), the busy threshold and its wait queue. route() hashes the
prompt once, only as far as the index walk reads, scores only the workers
that can matter, and never blocks on I/O unless every worker is busy.

A worker that holds the prompt's next blocks in host memory or on disk
(after those in its device tier) is credited for them with
--router-host-cache-hit-weight / --router-disk-cache-hit-weight (see
cost_model.py), and the request's prefill counted on it leaves them out: the
worker copies them back instead of computing them.

The block size prompts are hashed with is the workers' own: a model's is the
`block_size` its oldest live worker registered (the worker whose model card
the later ones were checked against at their start); a worker that registers
another, or none, is never routed to. Until a worker registers, there is
nothing to route to and no block size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from tandem.runtime.block_hash import LazySequenceHashes
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.instance_set import ChangeKind
from tandem.runtime.wire.kv_events_pb2 import LoadMetrics
from tandem.runtime.wire.router_pb2 import ActiveLoadUpdate

from . import cost_model
from .active_load import ActiveLoadManager
from .api import BaseRouter, NoWorkersError, RouterBusyError, RouteResult
from .approx_index import ApproxIndex
from .config import RoutingConfig
from .kv_event_follower import KvEventFollower
from .load_sharing import LoadSharing
from .metrics import ModelRouterMetrics, RouterMetrics
from .radix_index import RadixIndex, TierOverlaps
from .score_table import ScoreTable
from .worker_view import WorkerView, candidates

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription
    from tandem.runtime.messaging import Messaging

log = logging.getLogger(__name__)
Kind = ActiveLoadUpdate.Kind


class KvRouter(BaseRouter):
    """Owns the KV index, the active-load counts and the wait queue of one router replica."""

    def __init__(
        self,
        config: RoutingConfig,
        workers: WorkerView,
        *,
        messaging: Messaging | None = None,
        metrics: ModelRouterMetrics | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        router_id: str | None = None,
    ) -> None:
        self.config = config
        self._block_size: int | None = None  # from the workers' registrations
        self._refused: dict[str, str] = {}  # instance id -> why it gets no requests
        self.index = RadixIndex()
        self.load = ActiveLoadManager(clock)
        self.load.on_release = self._wake_waiters
        self._clock = clock
        self._scores = ScoreTable(self.load)
        # Every model's router reports into one shared RouterMetrics; else a registry of its own.
        self.metrics = metrics if metrics is not None else RouterMetrics().for_model("")
        self._workers = workers
        self._messaging = messaging
        self._rng = rng or random.Random()
        self.approx: ApproxIndex | None = None
        self.follower: KvEventFollower | None = None
        if config.kv_events:
            self.follower = KvEventFollower(
                self.index,
                endpoint_of=self._endpoint_of,
                is_member=lambda worker: worker in self._workers.instances,
            )
        else:
            self.approx = ApproxIndex(self.index, config.approx_ttl, clock)
        self.metrics.bind(self.index, self.follower)
        self.sharing: LoadSharing | None = None
        if messaging is not None and config.router_replica_sync:
            self.sharing = LoadSharing(messaging, self.load, router_id)
        self._load_subscription: Subscription | None = None
        self._num_waiting = 0
        self._released = asyncio.Event()
        self._started = False
        workers.on_change(self._on_worker_change)
        self._check_block_sizes()

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._messaging is None:
            return
        if self.sharing is not None:
            await self.sharing.start()
        self._load_subscription = await self._messaging.subscribe_load(self._on_load)
        if self.follower is not None:
            await self.follower.start(self._messaging, list(self._workers.instances))
            self.follower.drop_unknown_workers(set(self._workers.instances))

    async def stop(self) -> None:
        if self._load_subscription is not None:
            with contextlib.suppress(Exception):
                await self._load_subscription.unsubscribe()
            self._load_subscription = None
        if self.follower is not None:
            await self.follower.stop()
        if self.sharing is not None:
            await self.sharing.stop()
        self._started = False

    # -- block size -------------------------------------------------------------

    @property
    def block_size(self) -> int:
        """Tokens per KV block of this model's workers: what prompts are hashed with."""
        if self._block_size is None:
            raise NoWorkersError("no worker available (none has registered a KV block size)")
        return self._block_size

    @property
    def refused(self) -> dict[str, str]:
        """Workers never routed to (their block size is not their model's), and why."""
        return dict(self._refused)

    def _check_block_sizes(self) -> None:
        """Learn each model's block size from its oldest worker; refuse workers that differ.

        Per model, since a router over workers of any model ('') may see several.
        Called whenever a worker joins or leaves; a refused worker is logged once.
        """
        instances = self._workers.instances
        by_age = sorted(instances.values(), key=lambda i: (i.started_at, i.instance_id))
        model_sizes: dict[str, int] = {}
        for info in by_age:
            if info.block_size > 0:
                model_sizes.setdefault(info.model, info.block_size)
        refused: dict[str, str] = {}
        for info in by_age:
            expected = model_sizes.get(info.model)
            if info.block_size <= 0:
                refused[info.instance_id] = "it registers no KV block size"
            elif info.block_size != expected:
                refused[info.instance_id] = (
                    f"its KV blocks hold {info.block_size} tokens, "
                    f"model {info.model!r} uses {expected}"
                )
        for iid, why in refused.items():
            if iid not in self._refused:
                log.error("not routing to worker: %s", why, extra={"instance_id": iid})
        self._refused = refused
        sized = [info.block_size for info in by_age if info.instance_id not in refused]
        block_size = sized[0] if sized else None
        if block_size is not None and block_size != self._block_size:
            log.info("hashing prompts in KV blocks of %d tokens, the workers' size", block_size)
        self._block_size = block_size

    # -- routing ----------------------------------------------------------------

    async def route(
        self,
        request_id: str,
        token_ids: list[int],
        *,
        exclude: Collection[str] = (),
        max_tokens: int = 0,
    ) -> RouteResult:
        started = time.perf_counter()
        if self.load.get(request_id) is not None:
            self.free(request_id)  # routed again without a free (a retry): count it once
        block_size = self.block_size
        # Hashed only as far as the walk reads (a prompt nobody holds: its first blocks).
        hashes = LazySequenceHashes(token_ids, block_size)
        request_blocks = cost_model.request_blocks(len(token_ids), max_tokens, block_size)
        if self.approx is not None:
            self.approx.expire()
        overlaps = self.index.tier_overlaps(hashes)
        chosen = self._choose(overlaps, len(hashes), request_blocks, exclude)
        if chosen is None:
            chosen = await self._wait_for_room(hashes, request_blocks, exclude)
            started = time.perf_counter()
        info, overlap = chosen
        prefill_tokens = max(len(token_ids) - overlap * block_size, 0)
        if (
            self.load.add(request_id, info.instance_id, prefill_tokens, request_blocks)
            and self.sharing
        ):
            self.sharing.publish(
                Kind.KIND_ADD, request_id, info.instance_id, prefill_tokens, request_blocks
            )
        if self.approx is not None:
            self.approx.insert(info.instance_id, hashes.all())
        self.metrics.observe_decision(
            info.instance_id, overlap, len(hashes), time.perf_counter() - started
        )
        return RouteResult(info.instance_id, info.endpoint, overlap, len(hashes))

    def _choose(
        self,
        overlaps: TierOverlaps,
        prompt_blocks: int,
        request_blocks: int,
        exclude: Collection[str],
    ) -> tuple[InstanceInfo, int] | None:
        """The best worker below the busy threshold and the prompt blocks it holds in any
        tier, or None when all are busy (the cost model over the kept terms: score_table.py)."""
        scores = self._scores
        scores.sync(
            self._workers.instances, self._refused, self.block_size, self.config, self._clock()
        )
        if not scores.num_allowed(exclude):
            candidates(self._workers, exclude)  # raises NoWorkersError with the reason
            raise NoWorkersError(f"no worker available (refused: {sorted(self._refused)})")
        chosen = scores.choose(overlaps, prompt_blocks, request_blocks, exclude, self._rng)
        if chosen is None:
            return None
        row, held = chosen
        return scores.infos[row], held

    async def _wait_for_room(
        self, hashes: LazySequenceHashes, request_blocks: int, exclude: Collection[str]
    ) -> tuple[InstanceInfo, int]:
        if self._num_waiting >= self.config.max_queue:
            self.metrics.rejected.inc()
            raise RouterBusyError(
                f"every worker is busy and {self._num_waiting} requests are queued"
            )
        self._num_waiting += 1
        self.metrics.queued.set(self._num_waiting)
        waited_from = time.monotonic()
        try:
            async with asyncio.timeout(self.config.queue_timeout):
                while True:
                    self._released.clear()
                    chosen = self._choose(
                        self.index.tier_overlaps(hashes), len(hashes), request_blocks, exclude
                    )
                    if chosen is not None:
                        return chosen
                    await self._released.wait()
        except TimeoutError:
            self.metrics.rejected.inc()
            raise RouterBusyError(
                f"no worker below the busy threshold within {self.config.queue_timeout}s"
            ) from None
        finally:
            self._num_waiting -= 1
            self.metrics.queued.set(self._num_waiting)
            self.metrics.queue_wait_seconds.observe(time.monotonic() - waited_from)

    def _wake_waiters(self) -> None:
        if self._num_waiting:
            self._released.set()

    # -- request lifecycle ----------------------------------------------------------

    def prefill_done(self, request_id: str) -> None:
        req = self.load.prefill_done(request_id)
        if req is not None and req.is_local and self.sharing is not None:
            self.sharing.publish(Kind.KIND_PREFILL_DONE, request_id, req.instance_id)

    def free(self, request_id: str) -> None:
        req = self.load.free(request_id)
        if req is not None and req.is_local and self.sharing is not None:
            self.sharing.publish(Kind.KIND_FREE, request_id, req.instance_id)

    # -- inputs -----------------------------------------------------------------

    async def _on_load(self, metrics: LoadMetrics) -> None:
        if metrics.instance_id in self._workers.instances:
            self.load.report(
                metrics.instance_id,
                metrics.active_blocks,
                metrics.pending_prefill_tokens,
                metrics.total_blocks,
            )
        self.load.expire()

    def _on_worker_change(self, kind: ChangeKind, info: InstanceInfo) -> None:
        if kind != "removed":
            if self.follower is not None:
                self.follower.worker_added(info.instance_id)
            self._check_block_sizes()
            self._wake_waiters()
            return
        self._check_block_sizes()
        self.load.remove_worker(info.instance_id)
        if self.follower is not None:
            self.follower.worker_removed(info.instance_id)
        elif self.approx is not None:
            self.approx.remove_worker(info.instance_id)

    def _endpoint_of(self, instance_id: str) -> str | None:
        info = self._workers.instances.get(instance_id)
        return info.endpoint if info is not None else None
