"""Conditional disaggregation: per request, prefill on the decode worker or on a prefill worker.

After the router picked a worker, a request to a `decode` worker is prefilled
remotely only when both hold:
- its prompt's uncached length there (what the router's index says that worker
  lacks) exceeds `max_local_prefill_length`, and
- the model's prefill queue (jobs in the JetStream work queue, queued and
  running) holds fewer than `max_prefill_queue_size` jobs.
Then a prefill worker is picked KV-aware (the model's prefill router: the same
policy, cost model and index over the prefill pool). Every decision is counted
with its reason (`tandem_frontend_disagg_decisions_total`). Requests to
`aggregated` workers make no decision.

Both knobs start from the frontend's flags and follow the etcd key
`tandem/{ns}/disagg/settings` (JSON; a field it leaves out keeps the flag's
value), so they change at run time without a restart. The queue depth is
read from JetStream every `_DEPTH_POLL_SECONDS` per model, plus the jobs this
frontend sent since that read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from etcd3aio import Etcd3Client
from tandem.router.api import BaseRouter, NoWorkersError, RouterBusyError, RouteResult
from tandem.runtime.discovery import Discovery
from tandem.runtime.etcd_client import ETCD_ERRORS
from tandem.runtime.keys import disagg_settings_key
from tandem.runtime.prefill_queue import PrefillQueue
from tandem.runtime.tasks import cancel_and_wait

from .metrics import FrontendMetrics

if TYPE_CHECKING:
    from .models import ServedModel

log = logging.getLogger(__name__)

_DEPTH_POLL_SECONDS = 0.1
_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class DisaggSettings:
    """The two knobs of the conditional rule."""

    max_local_prefill_length: int = 1000
    """Prefill remotely only when more prompt tokens than this are uncached on the decode worker."""
    max_prefill_queue_size: int = 32
    """... and the model's prefill queue holds fewer jobs than this."""

    def __post_init__(self) -> None:
        if self.max_local_prefill_length < 0 or self.max_prefill_queue_size < 0:
            raise ValueError("max_local_prefill_length and max_prefill_queue_size must be >= 0")

    def updated(self, raw: bytes | str) -> DisaggSettings:
        """These settings with the fields of JSON `raw` applied; ValueError if it is not valid."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            unknown = set(data) - {"max_local_prefill_length", "max_prefill_queue_size"}
            if unknown:
                raise ValueError(f"unknown fields {sorted(unknown)}")
            fields = {k: int(v) for k, v in data.items() if not isinstance(v, bool)}
            if len(fields) != len(data):
                raise TypeError("a value is not a number")
            return replace(self, **fields)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not disaggregation settings: {raw!r} ({exc})") from None


@dataclass(frozen=True, slots=True)
class RemotePrefill:
    """Where one request's prompt is prefilled, and the router that counts it there."""

    instance_id: str
    router: BaseRouter


class Disaggregation:
    """Owns the live settings, the prefill queue depths and the per-request decision."""

    def __init__(
        self,
        defaults: DisaggSettings,
        metrics: FrontendMetrics,
        prefill_router: Callable[[str], Awaitable[BaseRouter | None]],
        queue: PrefillQueue | None = None,
        discovery: Discovery | None = None,
    ) -> None:
        self.defaults = defaults
        self.settings = defaults
        self._metrics = metrics
        self._prefill_router = prefill_router
        self._queue = queue
        self._discovery = discovery
        self._depths: dict[str, int] = {}  # model -> jobs in the queue, last read + sent since
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the settings key (the discovery must be started)."""
        if self._discovery is not None:
            self._watch = asyncio.create_task(
                self._follow_settings(self._discovery.client, self._discovery.namespace),
                name="disagg-settings",
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._watch)
        for task in self._pollers.values():
            await cancel_and_wait(task)
        self._pollers.clear()

    def queue_depth(self, model: str) -> int:
        return self._depths.get(model, 0)

    async def decide(
        self, request_id: str, model: ServedModel, route: RouteResult, token_ids: list[int]
    ) -> RemotePrefill | None:
        """Where the prompt routed to `route` is prefilled: a prefill worker, or None (there)."""
        info = model.workers.get(route.instance_id)
        if info is None or info.role != "decode":
            return None
        settings = self.settings
        uncached = max(len(token_ids) - route.overlap_blocks * info.block_size, 0)
        if uncached <= settings.max_local_prefill_length:
            reason = (
                "prefix_cached"
                if len(token_ids) > settings.max_local_prefill_length
                else "short_prompt"
            )
            self._count(model.name, "local", reason)
            return None
        self._poll(model.name)
        if self.queue_depth(model.name) >= settings.max_prefill_queue_size:
            self._count(model.name, "local", "queue_full")
            return None
        router = await self._prefill_router(model.name)
        if router is None:
            self._count(model.name, "local", "no_prefill_worker")
            return None
        try:
            chosen = await router.route(request_id, token_ids, max_tokens=1)
        except NoWorkersError:
            self._count(model.name, "local", "no_prefill_worker")
            return None
        except RouterBusyError:
            self._count(model.name, "local", "prefill_busy")
            return None
        self._depths[model.name] = self._depths.get(model.name, 0) + 1
        self._count(model.name, "remote", "long_prompt")
        return RemotePrefill(chosen.instance_id, router)

    # -- internals ---------------------------------------------------------------

    def _count(self, model: str, decision: str, reason: str) -> None:
        self._metrics.disagg_decisions.labels(model, decision, reason).inc()

    def _poll(self, model: str) -> None:
        """Start reading `model`'s queue depth (once; it runs until stop)."""
        if model in self._pollers or self._queue is None:
            return
        self._pollers[model] = asyncio.create_task(
            self._poll_depth(model, self._queue), name=f"prefill-depth {model}"
        )

    async def _poll_depth(self, model: str, queue: PrefillQueue) -> None:
        gauge = self._metrics.prefill_queue_depth.labels(model)
        failing = False
        while True:
            try:
                depth = await queue.depth(model)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: keep the last depth and say so once
                if not failing:
                    log.warning("prefill queue depth of %s unreadable: %s", model, exc)
                failing = True
            else:
                failing = False
                self._depths[model] = depth
                gauge.set(depth)
            await asyncio.sleep(_DEPTH_POLL_SECONDS)

    async def _follow_settings(self, etcd: Etcd3Client, namespace: str) -> None:
        key = disagg_settings_key(namespace)
        while True:
            try:
                resp = await etcd.kv.get(key, timeout=5)  # type: ignore[union-attr]
                self._apply(resp.kvs[0].value if resp.kvs else None)
                assert etcd.watch is not None
                async for watch_resp in etcd.watch.watch(
                    key, start_revision=resp.header.revision + 1
                ):
                    if watch_resp.canceled:
                        break
                    for event in watch_resp.events:
                        self._apply(event.kv.value if event.type == 0 else None)  # 0: PUT
            except asyncio.CancelledError:
                raise
            except ETCD_ERRORS as exc:
                log.warning("etcd watch on %s interrupted; keeping settings: %s", key, exc)
                await asyncio.sleep(_RETRY_SECONDS)

    def _apply(self, raw: bytes | None) -> None:
        try:
            settings = self.defaults if raw is None else self.defaults.updated(raw)
        except ValueError as exc:
            log.warning("ignoring the disaggregation settings key: %s", exc)
            return
        if settings != self.settings:
            log.info(
                "disaggregation settings max_local_prefill_length=%d max_prefill_queue_size=%d",
                settings.max_local_prefill_length,
                settings.max_prefill_queue_size,
            )
        self.settings = settings
