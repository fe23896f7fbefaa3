"""Connectors: what turns the planner's replica target into running workers.

The planner only writes `tandem/{namespace}/planner/replicas/{model}`; a
connector watches that key (`follow_target`) and makes the pools match. The
local connector (`tandem.launcher.local_connector`) starts and stops worker
processes of `tandem up`; the Kubernetes one (`kubernetes_connector.PoolFollower`)
sets the `replicas` of each pool's Deployment.
"""

from __future__ import annotations

import logging
from typing import Protocol

from .target import ReplicaTarget, TargetStore

log = logging.getLogger("tandem.planner.connector")


class Connector(Protocol):
    """Makes the running workers of one model match each target it is given.

    `apply` is called with every target the planner writes (and the one
    already there when the connector starts). A target with `pools`
    (`{"prefill": 2, "decode": 3}`) sizes each pool of a disaggregated model;
    one without sizes the one aggregated pool to `replicas`. It returns once
    the change is made (processes started or stopped, replicas set), not once
    the workers serve.
    """

    async def apply(self, target: ReplicaTarget) -> None: ...


async def follow_target(store: TargetStore, model: str, connector: Connector) -> None:
    """Apply every replica target of `model` to `connector` until cancelled (readers watch)."""
    async for target in store.follow(model):
        if target is None:
            log.info("no replica target for %s; keeping the pools as they are", model)
            continue
        await connector.apply(target)
