"""`python -m tandem.planner` / `tandem planner`: scale a model's worker pool until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from tandem.runtime.config import parse_config
from tandem.runtime.discovery import Discovery
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.keys import planner_leader_key, replicas_key
from tandem.runtime.logs import setup_logging
from tandem.runtime.messaging import Messaging
from tandem.runtime.metrics import serve_metrics
from tandem.runtime.prefill_queue import PrefillQueue
from tandem.runtime.service_main import run_service
from tandem.runtime.startup import StartupError
from tandem.runtime.tasks import cancel_and_wait

from .config import PlannerConfig
from .demand_view import DemandView
from .election import LeaderElection
from .kubernetes_connector import start_follower
from .load_view import LoadView
from .metrics import PlannerMetrics
from .profile import WorkerProfile
from .service import Planner, SlaInputs
from .target import TargetStore

log = logging.getLogger("tandem.planner")
COMPONENT = "planner"


async def serve(config: PlannerConfig, stop: asyncio.Event, ready: asyncio.Event) -> None:
    """Run until `stop` is set; `ready` is set once connected (deciding, or standing by)."""
    instance_id = f"planner-{uuid.uuid4().hex[:8]}"
    sla = _sla_inputs(config)
    messaging = Messaging(config.nats, config.namespace, name=instance_id)
    discovery = Discovery(config.etcd, config.namespace, lease_ttl=config.leader_lease_ttl)
    metrics = PlannerMetrics(config.model)
    view = LoadView(discovery, messaging, config.model, config.load_max_age)
    http = None
    follower: asyncio.Task[None] | None = None
    election: LeaderElection | None = None
    try:
        await messaging.connect()
        await discovery.start()
        await view.start()
        if sla is not None:
            await sla.demand.start()
        leader_key = planner_leader_key(config.namespace, config.model)
        election = LeaderElection(
            discovery.client, leader_key, instance_id, lambda: discovery.lease_id
        )
        store = TargetStore(discovery.client, config.namespace)
        planner = Planner(
            config,
            view,
            store,
            metrics,
            sla=sla,
            guard=election.put_if_leader,
            instance_id=instance_id,
            prefill_depth=_depth_reader(PrefillQueue(messaging), config.model),
        )
        if config.connector == "kubernetes":
            follower = await start_follower(config.kubernetes, store, config.model)
        http = await serve_metrics(metrics.registry, config.metrics_host, config.metrics_port)
        port = http.addresses[0][1] if http.addresses else config.metrics_port
        metrics_endpoint = f"{'127.0.0.1' if config.metrics_host in ('0.0.0.0', '::', '') else config.metrics_host}:{port}"
        await discovery.register_instance(
            InstanceInfo(
                instance_id, COMPONENT, metrics_endpoint, model=config.model, started_at=time.time()
            )
        )
        log.info(
            "planner ready instance_id=%s model=%s mode=%s key=%s leader_key=%s metrics=%s "
            "workers=[%d, %d] interval=%.1fs",
            instance_id,
            config.model,
            config.mode,
            replicas_key(config.namespace, config.model),
            leader_key,
            metrics_endpoint,
            config.min_workers,
            config.max_workers,
            config.adjustment_interval,
        )
        ready.set()
        await _lead_while_elected(planner, election, metrics, stop)
    finally:
        log.info("planner stopping")
        if election is not None:
            await election.resign()  # a standby takes over now, not after the lease
        await cancel_and_wait(follower)
        if sla is not None:
            await sla.demand.close()
        await view.close()
        await discovery.close()
        if http is not None:
            await http.cleanup()
        await messaging.close()


async def _lead_while_elected(
    planner: Planner, election: LeaderElection, metrics: PlannerMetrics, stop: asyncio.Event
) -> None:
    """Stand by until elected, plan until leadership is lost or `stop`; again and again."""
    while not stop.is_set():
        metrics.is_leader.set(0)
        campaign = asyncio.create_task(election.campaign(), name="campaign")
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({campaign, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not campaign.done():
            await cancel_and_wait(campaign)
            return
        campaign.result()
        metrics.is_leader.set(1)
        await planner.resume()  # from the target the previous leader left
        await planner.run(stop, election.lost)


def _depth_reader(queue: PrefillQueue, model: str) -> Callable[[], Awaitable[int | None]]:
    """The model's prefill queue depth, None while NATS cannot say (logged once)."""
    failing = False

    async def depth() -> int | None:
        nonlocal failing
        try:
            value = await queue.depth(model)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # NATS away or reconnecting: the prefill pool holds
            if not failing:
                log.warning("prefill queue depth of %s unreadable: %s", model, exc)
            failing = True
            return None
        failing = False
        return value

    return depth


def _sla_inputs(config: PlannerConfig) -> SlaInputs | None:
    if config.mode != "sla":
        return None
    try:
        profile = WorkerProfile.load(config.profile)
    except ValueError as exc:
        raise StartupError(f"--profile: {exc}") from None
    return SlaInputs(profile, DemandView(config.frontend_url, config.model))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(PlannerConfig, argv, prog="tandem planner")
    setup_logging(config.log_level, component=COMPONENT)
    # Still connecting (nats/etcd down) when a signal comes: nothing to wait for.
    return run_service(
        COMPONENT,
        lambda stop, ready: serve(config, stop, ready),
        cancel_until_ready=True,
        dependencies=f"nats {config.nats}, etcd {config.etcd}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
