"""Peers' KV descriptors, read from etcd when first needed and kept until a transfer fails."""

from __future__ import annotations

from typing import Any

from tandem.runtime.etcd_client import ETCD_ERRORS
from tandem.runtime.keys import kv_descriptor_key

from .descriptor import KvDescriptor


class PeerUnknownError(Exception):
    """No KV descriptor is registered for that worker (not a prefill/decode worker, or gone)."""


class KvPeers:
    """Owns a cache of descriptors by instance id; `forget` makes the next `get` read etcd again."""

    def __init__(self, etcd: Any, namespace: str) -> None:
        self._etcd = etcd  # an etcd3aio client
        self._namespace = namespace
        self._known: dict[str, KvDescriptor] = {}

    async def get(self, instance_id: str, *, agent_name: str = "") -> KvDescriptor:
        """The descriptor of `instance_id` (re-read if its agent is not `agent_name`)."""
        known = self._known.get(instance_id)
        if known is not None and (not agent_name or known.agent_name == agent_name):
            return known
        key = kv_descriptor_key(self._namespace, instance_id)
        try:
            resp = await self._etcd.kv.get(key, timeout=5)
        except ETCD_ERRORS as exc:
            raise PeerUnknownError(f"KV descriptor of {instance_id} unreadable: {exc}") from None
        if not resp.kvs:
            raise PeerUnknownError(f"no KV descriptor at {key}")
        descriptor = KvDescriptor.from_json(resp.kvs[0].value)
        self._known[instance_id] = descriptor
        return descriptor

    def forget(self, instance_id: str) -> None:
        self._known.pop(instance_id, None)
