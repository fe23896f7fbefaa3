"""`python -m tandem.planner` / `tandem planner`: scale a model's worker pool until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence

from tandem.runtime.config import parse_config
from tandem.runtime.discovery import Discovery
from tandem.runtime.instance_info import InstanceInfo
from tandem.runtime.keys import replicas_key
from tandem.runtime.logs import setup_logging
from tandem.runtime.messaging import Messaging
from tandem.runtime.metrics import serve_metrics
from tandem.runtime.service_main import run_service

from .config import PlannerConfig
from .load_view import LoadView
from .metrics import PlannerMetrics
from .service import Planner
from .target import TargetStore

log = logging.getLogger("tandem.planner")
COMPONENT = "planner"


async def serve(config: PlannerConfig, stop: asyncio.Event, ready: asyncio.Event) -> None:
    """Run until `stop` is set; `ready` is set once connected and deciding."""
    instance_id = f"planner-{uuid.uuid4().hex[:8]}"
    messaging = Messaging(config.nats, config.namespace, name=instance_id)
    discovery = Discovery(config.etcd, config.namespace)
    metrics = PlannerMetrics()
    view = LoadView(discovery, messaging, config.model, config.load_max_age)
    http = None
    try:
        await messaging.connect()
        await discovery.start()
        await view.start()
        planner = Planner(config, view, TargetStore(discovery.client, config.namespace), metrics)
        await planner.resume()
        http = await serve_metrics(metrics.registry, config.metrics_host, config.metrics_port)
        port = http.addresses[0][1] if http.addresses else config.metrics_port
        metrics_endpoint = f"{'127.0.0.1' if config.metrics_host in ('0.0.0.0', '::', '') else config.metrics_host}:{port}"
        await discovery.register_instance(
            InstanceInfo(
                instance_id, COMPONENT, metrics_endpoint, model=config.model, started_at=time.time()
            )
        )
        log.info(
            "planner ready instance_id=%s model=%s key=%s metrics=%s workers=[%d, %d] interval=%.1fs",
            instance_id,
            config.model,
            replicas_key(config.namespace, config.model),
            metrics_endpoint,
            config.min_workers,
            config.max_workers,
            config.adjustment_interval,
        )
        ready.set()
        await planner.run(stop)
    finally:
        log.info("planner stopping")
        await view.close()
        await discovery.close()
        if http is not None:
            await http.cleanup()
        await messaging.close()


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
