"""The planner's loop: every adjustment interval observe the pool, decide, write the target."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from tandem.runtime.etcd_client import ETCD_ERRORS

from .config import PlannerConfig
from .load_view import LoadView, PoolSnapshot
from .metrics import PlannerMetrics
from .policy import Decision, LoadSummary, PolicyState, decide
from .target import ReplicaTarget, TargetStore

log = logging.getLogger("tandem.planner")


class Planner:
    """Owns the policy state of one model and writes its replica target when it changes."""

    def __init__(
        self,
        config: PlannerConfig,
        view: LoadView,
        store: TargetStore,
        metrics: PlannerMetrics,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._view = view
        self._store = store
        self._metrics = metrics
        self._wall_clock = wall_clock
        self.state = PolicyState()
        self._last_reason = ""

    async def resume(self) -> None:
        """Start from the target already in etcd (a restarted planner continues, not resets)."""
        try:
            existing = await self._store.read(self.config.model)
        except ValueError as exc:
            log.warning("ignoring the replica target in etcd: %s", exc)
            existing = None
        if existing is not None:
            self.state = PolicyState(target=existing.replicas)
            self._metrics.desired_replicas.set(existing.replicas)
            log.info(
                "resuming from target %d workers of %s (%s)",
                existing.replicas,
                self.config.model,
                existing.reason or "no reason given",
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Decide every `adjustment_interval` seconds until `stop` is set."""
        while not stop.is_set():
            await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.adjustment_interval)

    async def step(self) -> Decision:
        """One interval: observe, decide, and write the target if it changed."""
        snapshot = self._view.snapshot()
        decision = decide(snapshot.observed, snapshot.loads, self.config.thresholds, self.state)
        self._observe(snapshot)
        if decision.notice:
            log.info("%s", decision.notice)
        if decision.direction != "hold":
            if not await self._write(decision):
                return decision  # state kept: the same decision is retried next interval
            previous = self.state.target if self.state.target is not None else snapshot.observed
            self._metrics.scaling_events.labels(decision.direction).inc()
            self._metrics.desired_replicas.set(decision.replicas)
            log.info(
                "scaling %s %s: %d -> %d workers (live %d): %s",
                self.config.model,
                decision.direction,
                previous,
                decision.replicas,
                snapshot.observed,
                decision.reason,
            )
        elif decision.reason != self._last_reason:
            log.debug(
                "holding %s at %d workers: %s",
                self.config.model,
                decision.replicas,
                decision.reason,
            )
        self._last_reason = decision.reason
        self.state = decision.state
        return decision

    def _observe(self, snapshot: PoolSnapshot) -> None:
        self._metrics.observed_replicas.set(snapshot.observed)
        if snapshot.loads:
            self._metrics.kv_usage.set(LoadSummary.of(snapshot.loads).kv_usage)

    async def _write(self, decision: Decision) -> bool:
        target = ReplicaTarget(
            model=self.config.model,
            replicas=decision.replicas,
            reason=decision.reason,
            decided_at=self._wall_clock(),
        )
        try:
            await self._store.write(target)
        except ETCD_ERRORS as exc:
            log.warning("could not write the replica target (retrying next interval): %s", exc)
            return False
        return True
