"""The record a process publishes about itself in etcd (the value under its instance key)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

Role = Literal["aggregated", "prefill", "decode"]


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What a process publishes about itself under its lease, as compact JSON.

    Readers ignore fields they do not know, so a field can be added without
    breaking older readers.
    """

    instance_id: str
    component: str
    endpoint: str
    model: str = ""
    role: Role = "aggregated"
    block_size: int = 0
    total_blocks: int = 0
    started_at: float = 0.0
    # A worker that is shutting down sets this and stays registered until its
    # in-flight requests end: routers send it nothing new, clients keep its streams.
    draining: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> InstanceInfo:
        data = json.loads(raw)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)
