"""The planner's loop: every adjustment interval observe the pool, decide, write the target.

`--mode load` decides with `policy.decide` on the workers' load reports
(`pool_policy.decide_pools` for a disaggregated model's prefill and decode
pools, the prefill one on the prefill queue's depth);
`--mode sla` with `sla_policy.decide_sla` on the demand the frontends saw
(`DemandView`), the next interval's predicted by `predictors`, and the
worker profile. Targets are written through the leader's guard, so only the
active planner's land.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tandem.runtime.etcd_client import ETCD_ERRORS

from .config import PlannerConfig
from .demand_view import DemandView
from .load_view import LoadView, PoolSnapshot
from .metrics import PlannerMetrics
from .policy import Decision, LoadSummary, PolicyState, decide
from .pool_policy import PoolsDecision, decide_pools
from .predictors import make_predictor
from .profile import WorkerProfile
from .sla_policy import Demand, Observed, SlaDecision, SlaState, decide_sla
from .target import Guard, ReplicaTarget, TargetStore

log = logging.getLogger("tandem.planner")


@dataclass(frozen=True, slots=True)
class SlaInputs:
    """What --mode sla decides with besides the pool: the worker profile and the demand view."""

    profile: WorkerProfile
    demand: DemandView


class Planner:
    """Owns the policy state of one model and writes its replica target when it changes."""

    def __init__(
        self,
        config: PlannerConfig,
        view: LoadView,
        store: TargetStore,
        metrics: PlannerMetrics,
        wall_clock: Callable[[], float] = time.time,
        *,
        sla: SlaInputs | None = None,
        guard: Guard | None = None,
        instance_id: str = "",
        prefill_depth: Callable[[], Awaitable[int | None]] | None = None,
    ) -> None:
        if config.mode == "sla" and sla is None:
            raise ValueError("--mode sla needs a profile and a demand view")
        self.config = config
        self._view = view
        self._store = store
        self._metrics = metrics
        self._wall_clock = wall_clock
        self._sla = sla
        self._guard = guard
        self._instance_id = instance_id
        self.state = PolicyState()
        self.pool_states: dict[str, PolicyState] = {}
        self.sla_state = SlaState()
        self._prefill_depth = prefill_depth
        settings = config.predictor_settings
        self._predictors = {
            q: make_predictor(config.predictor, settings)
            for q in ("request_rate", "input_tokens", "output_tokens")
        }
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
            self.pool_states = {pool: PolicyState(target=n) for pool, n in existing.pools.items()}
            self.sla_state = SlaState(targets=existing.pools or {"aggregated": existing.replicas})
            self._metrics.desired_replicas.set(existing.replicas)
            log.info(
                "resuming from target %d workers of %s (%s)",
                existing.replicas,
                self.config.model,
                existing.reason or "no reason given",
            )

    async def run(self, stop: asyncio.Event, lost: asyncio.Event | None = None) -> None:
        """Decide every `adjustment_interval` seconds until `stop` (or `lost`: leadership) is set."""
        events = [stop] if lost is None else [stop, lost]
        while not any(e.is_set() for e in events):
            if self.config.mode == "sla":
                await self.step_sla()
            elif self.pool_states or self._view.snapshot().is_disaggregated:
                await self.step_pools()
            else:
                await self.step()
            waits = [asyncio.ensure_future(e.wait()) for e in events]
            try:
                await asyncio.wait(
                    waits,
                    timeout=self.config.adjustment_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for w in waits:
                    w.cancel()

    async def step(self) -> Decision:
        """One interval of --mode load: observe, decide, and write the target if it changed."""
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

    async def step_pools(self) -> PoolsDecision:
        """One interval of --mode load for a disaggregated model: each pool on its own load."""
        snapshot = self._view.snapshot()
        depth = await self._prefill_depth() if self._prefill_depth is not None else None
        decision = decide_pools(
            snapshot.roles,
            snapshot.role_loads,
            depth,
            self.config.pool_thresholds,
            self.pool_states,
        )
        self._observe(snapshot)
        for pool, d in decision.decisions.items():
            if d.notice:
                log.info("%s pool: %s", pool, d.notice)
        targets = decision.targets
        for pool, n in targets.items():
            self._metrics.pool_replicas.labels(pool).set(n)
        if decision.changed:
            total = sum(targets.values())
            if not await self._write_target(total, decision.reason, targets):
                return decision  # states kept: the same decision is retried next interval
            for pool, d in decision.decisions.items():
                if d.direction == "hold":
                    continue
                previous = self.pool_states.get(pool, PolicyState()).target
                self._metrics.scaling_events.labels(d.direction).inc()
                log.info(
                    "scaling %s %s pool %s: %d -> %d workers (live %d): %s",
                    self.config.model,
                    pool,
                    d.direction,
                    snapshot.roles.get(pool, 0) if previous is None else previous,
                    d.replicas,
                    snapshot.roles.get(pool, 0),
                    d.reason,
                )
            self._metrics.desired_replicas.set(total)
        elif decision.reason != self._last_reason:
            log.debug("holding %s at %s: %s", self.config.model, _pools(targets), decision.reason)
        self._last_reason = decision.reason
        self.pool_states = decision.states
        return decision

    def _observe(self, snapshot: PoolSnapshot) -> None:
        self._metrics.observed_replicas.set(snapshot.observed)
        if snapshot.loads:
            self._metrics.kv_usage.set(LoadSummary.of(snapshot.loads).kv_usage)

    async def step_sla(self) -> SlaDecision | None:
        """One interval of --mode sla; None for the first, which only takes the baseline."""
        assert self._sla is not None
        snapshot = self._view.snapshot()
        self._observe(snapshot)
        observed = await self._sla.demand.sample()
        if observed is None:
            return None
        predicted = self._predict(observed)
        live = snapshot.roles or {"aggregated": 0}
        decision = decide_sla(
            self._sla.profile, self.config.sla_bounds, predicted, observed, live, self.sla_state
        )
        self._export_sla(observed, decision)
        log.info(
            "planner decision model=%s mode=sla targets=%s live=%s observed_%s "
            "observed_ttft_ms=%s observed_itl_ms=%s expected_ttft_ms=%s expected_itl_ms=%s %s",
            self.config.model,
            _pools(decision.targets),
            _pools(live),
            observed.demand.describe().replace(" ", " observed_"),
            _ms(observed.ttft_ms),
            _ms(observed.itl_ms),
            _ms(decision.expected_ttft_ms),
            _ms(decision.expected_itl_ms),
            decision.reason,
        )
        if decision.changed:
            total = sum(decision.targets.values())
            previous = sum(self.sla_state.targets.values()) or snapshot.observed
            pools = {} if "aggregated" in decision.targets else dict(decision.targets)
            if not await self._write_target(total, decision.reason, pools):
                return decision  # state kept: the same decision is retried next interval
            direction = "up" if total > previous else "down"
            self._metrics.scaling_events.labels(direction).inc()
            self._metrics.desired_replicas.set(total)
            log.info(
                "scaling %s %s: %d -> %d workers %s (live %d)",
                self.config.model,
                direction,
                previous,
                total,
                _pools(decision.targets),
                snapshot.observed,
            )
        self.sla_state = decision.state
        return decision

    def _predict(self, observed: Observed) -> Demand:
        demand = observed.demand
        self._predictors["request_rate"].observe(demand.request_rate)
        if demand.request_rate > 0:  # lengths of an idle interval are not observations
            self._predictors["input_tokens"].observe(demand.input_tokens)
            self._predictors["output_tokens"].observe(demand.output_tokens)
        # The busiest of the next intervals a new worker needs to become useful.
        ahead = range(1, self.config.predict_ahead + 1)
        return Demand(
            request_rate=max(self._predictors["request_rate"].predict(h) for h in ahead),
            input_tokens=max(self._predictors["input_tokens"].predict(h) for h in ahead),
            output_tokens=max(self._predictors["output_tokens"].predict(h) for h in ahead),
        )

    def _export_sla(self, observed: Observed, d: SlaDecision) -> None:
        m = self._metrics
        for pool, n in d.targets.items():
            m.pool_replicas.labels(pool).set(n)
        for name, gauge in (("predicted", m.predicted), ("observed", m.observed_demand)):
            demand = d.predicted if name == "predicted" else observed.demand
            gauge.labels("request_rate").set(demand.request_rate)
            gauge.labels("input_tokens").set(demand.input_tokens)
            gauge.labels("output_tokens").set(demand.output_tokens)
        for phase, obs, exp in (
            ("ttft", observed.ttft_ms, d.expected_ttft_ms),
            ("itl", observed.itl_ms, d.expected_itl_ms),
        ):
            if obs is not None:
                m.latency.labels(phase, "observed").set(obs / 1000)
            if exp is not None:
                m.latency.labels(phase, "expected").set(exp / 1000)
        m.correction.labels("ttft").set(d.state.ttft_correction)
        m.correction.labels("itl").set(d.state.itl_correction)
        m.capacity.labels("prefill").set(d.prefill_capacity)
        m.capacity.labels("decode").set(d.decode_capacity)

    async def _write(self, decision: Decision) -> bool:
        return await self._write_target(decision.replicas, decision.reason, {})

    async def _write_target(self, replicas: int, reason: str, pools: dict[str, int]) -> bool:
        target = ReplicaTarget(
            model=self.config.model,
            replicas=replicas,
            reason=reason,
            decided_at=self._wall_clock(),
            pools=pools,
            planner=self._instance_id,
        )
        try:
            written = await self._store.write(target, self._guard)
        except ETCD_ERRORS as exc:
            log.warning("could not write the replica target (retrying next interval): %s", exc)
            return False
        if not written:
            log.warning("not the leader any more; the replica target was not written")
        return written


def _pools(sizes: dict[str, int]) -> str:
    return ",".join(f"{pool}:{n}" for pool, n in sorted(sizes.items())) or "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
