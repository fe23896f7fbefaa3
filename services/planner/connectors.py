"""Connectors: what turns the planner's replica target into running workers.

The planner only writes `tandem/{namespace}/planner/replicas/{model}`; a
connector watches that key (`follow_target`) and makes the pool match. The
local connector (`tandem.launcher.local_connector`) starts and stops worker
processes of `tandem up`; a Kubernetes connector would patch a Deployment's
replicas instead.
"""

from __future__ import annotations

import logging
from typing import Protocol

from .target import TargetStore

log = logging.getLogger("tandem.planner.connector")


class Connector(Protocol):
    """Makes the number of running workers of one model equal to the target it is given.

    `scale_to` is called with every target the planner writes (and the one
    already there when the connector starts); it returns once the change is
    made (processes started or stopped), not once the workers serve.
    """

    async def scale_to(self, replicas: int, reason: str) -> None: ...


async def follow_target(store: TargetStore, model: str, connector: Connector) -> None:
    """Apply every replica target of `model` to `connector` until cancelled (readers watch)."""
    async for target in store.follow(model):
        if target is None:
            log.info("no replica target for %s; keeping the pool as it is", model)
            continue
        await connector.scale_to(target.replicas, target.reason)
