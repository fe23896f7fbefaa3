"""What a worker publishes about its KV memory at `tandem/{ns}/nixl/{instance_id}`."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from .layout import KvLayout


@dataclass(frozen=True, slots=True)
class KvDescriptor:
    """A worker's KV transfer identity: transport, layout, where to reach it, its NIXL agent.

    `region_bases` (each layer tensor's address) and `agent_metadata` are only
    meaningful to a NIXL agent reading from this worker's registered memory.
    """

    instance_id: str
    transport: str
    endpoint: str
    layout: KvLayout
    agent_name: str = ""
    agent_metadata: bytes = b""
    region_bases: list[int] = field(default_factory=list)
    device_id: int = 0
    mem_type: str = "DRAM"  # NIXL's name: DRAM (host) or VRAM (GPU)

    def to_json(self) -> str:
        return json.dumps(
            {
                "instance_id": self.instance_id,
                "transport": self.transport,
                "endpoint": self.endpoint,
                "layout": self.layout.to_dict(),
                "agent_name": self.agent_name,
                "agent_metadata": base64.b64encode(self.agent_metadata).decode(),
                "region_bases": self.region_bases,
                "device_id": self.device_id,
                "mem_type": self.mem_type,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> KvDescriptor:
        data = json.loads(raw)
        return cls(
            instance_id=data["instance_id"],
            transport=data["transport"],
            endpoint=data["endpoint"],
            layout=KvLayout.from_dict(data["layout"]),
            agent_name=data.get("agent_name", ""),
            agent_metadata=base64.b64decode(data.get("agent_metadata", "")),
            region_bases=[int(a) for a in data.get("region_bases", [])],
            device_id=int(data.get("device_id", 0)),
            mem_type=data.get("mem_type", "DRAM"),
        )
