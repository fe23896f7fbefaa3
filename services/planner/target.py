"""The planner's one output: the desired size of a model's worker pool, as an etcd record.

Key `tandem/{namespace}/planner/replicas/{model}` holds JSON
`{"model", "replicas", "reason", "decided_at", "pools", "planner"}`. It is not
bound to a lease: the target must outlive a planner restart, and a connector
that loses the planner must keep the pool as it was rather than shrink it.
A planner writes it only while it is the model's leader (`election.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field

from etcd3aio import Etcd3Client
from tandem.runtime.etcd_client import ETCD_ERRORS
from tandem.runtime.keys import replicas_key

log = logging.getLogger(__name__)
_RETRY_SECONDS = 1.0
# (key, value) -> whether it was written: how a leader writes only while it leads.
Guard = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class ReplicaTarget:
    """How many workers of `model` should run, why, and when that was decided (unix seconds).

    `pools` splits `replicas` by role when the model is served disaggregated
    (`{"prefill": 2, "decode": 3}`), empty for one aggregated pool; `planner`
    is the instance id of the planner that wrote it ("" for `tandem up`).
    """

    model: str
    replicas: int
    reason: str
    decided_at: float
    pools: dict[str, int] = field(default_factory=dict)
    planner: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> ReplicaTarget:
        """Parse a record; raises ValueError on anything that is not a valid target."""
        try:
            data = json.loads(raw)
            target = cls(
                model=str(data["model"]),
                replicas=int(data["replicas"]),
                reason=str(data.get("reason", "")),
                decided_at=float(data.get("decided_at", 0.0)),
                pools={str(k): int(v) for k, v in (data.get("pools") or {}).items()},
                planner=str(data.get("planner", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a replica target: {raw!r}") from exc
        if target.replicas < 0 or any(n < 0 for n in target.pools.values()):
            raise ValueError(f"negative replica count in {raw!r}")
        return target


class TargetStore:
    """Reads, writes and watches replica targets in etcd through an already connected client."""

    def __init__(self, client: Etcd3Client, namespace: str) -> None:
        self._client = client
        self._namespace = namespace

    async def read(self, model: str) -> ReplicaTarget | None:
        resp = await self._client.kv.get(replicas_key(self._namespace, model), timeout=5)  # type: ignore[union-attr]
        if not resp.kvs:
            return None
        return ReplicaTarget.from_json(resp.kvs[0].value)

    async def write(self, target: ReplicaTarget, guard: Guard | None = None) -> bool:
        """Put the target (no lease: it outlives its writer); False if `guard` refused.

        `guard(key, value)` writes in its own way (the leader's conditional put).
        """
        key = replicas_key(self._namespace, target.model)
        if guard is not None:
            return await guard(key, target.to_json())
        await self._client.kv.put(key, target.to_json(), timeout=5)  # type: ignore[union-attr]
        return True

    async def follow(self, model: str) -> AsyncIterator[ReplicaTarget | None]:
        """Yield the current target, then every change (None: the key was deleted).

        Survives etcd outages: after an interruption it re-reads the key and
        yields it again, so a change made meanwhile is not lost.
        """
        key = replicas_key(self._namespace, model)
        while True:
            try:
                resp = await self._client.kv.get(key, timeout=5)  # type: ignore[union-attr]
                yield _parse(resp.kvs[0].value) if resp.kvs else None
                assert self._client.watch is not None  # connected by its owner
                async for watch_resp in self._client.watch.watch(
                    key, start_revision=resp.header.revision + 1
                ):
                    if watch_resp.canceled:
                        break
                    for event in watch_resp.events:
                        yield _parse(event.kv.value) if event.type == 0 else None  # 0: PUT
            except ETCD_ERRORS as exc:
                log.warning("etcd watch on %s interrupted; retrying: %s", key, exc)
                await asyncio.sleep(_RETRY_SECONDS)


def _parse(raw: bytes) -> ReplicaTarget | None:
    try:
        return ReplicaTarget.from_json(raw)
    except ValueError as exc:
        log.warning("ignoring malformed replica target: %s", exc)
        return None
