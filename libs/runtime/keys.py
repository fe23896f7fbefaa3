"""etcd key layout: the only place the keys are spelled (subjects.py is the NATS counterpart).

    tandem/{namespace}/instances/{component}/{instance_id}   InstanceInfo JSON, under the owner's lease
    tandem/{namespace}/models/{model}                         model card JSON, under the worker's lease
    tandem/{namespace}/planner/replicas/{model}               the planner's replica target JSON, no lease
    tandem/{namespace}/planner/leader/{model}                 the active planner's instance id, under its lease
    tandem/{namespace}/nixl/{instance_id}                     a worker's KV transfer descriptor JSON, under its lease
    tandem/{namespace}/disagg/settings                        conditional-disaggregation knobs JSON, no lease

`component` is "worker", "router" or "planner"; docs/contracts.md says who
writes and who reads each key.
"""

from __future__ import annotations


def instances_prefix(namespace: str, component: str | None = None) -> str:
    base = f"tandem/{namespace}/instances/"
    return base if component is None else f"{base}{component}/"


def instance_key(namespace: str, component: str, instance_id: str) -> str:
    return f"{instances_prefix(namespace, component)}{instance_id}"


def models_prefix(namespace: str) -> str:
    return f"tandem/{namespace}/models/"


def model_key(namespace: str, model: str) -> str:
    return f"{models_prefix(namespace)}{model}"


def replicas_key(namespace: str, model: str) -> str:
    """Where the planner writes how many workers `model` should have."""
    return f"tandem/{namespace}/planner/replicas/{model}"


def planner_leader_key(namespace: str, model: str) -> str:
    """Held by the one active planner of `model` (leader election over its lease)."""
    return f"tandem/{namespace}/planner/leader/{model}"


def kv_descriptor_key(namespace: str, instance_id: str) -> str:
    """Where a prefill or decode worker publishes its KV layout and transport (NIXL agent metadata)."""
    return f"tandem/{namespace}/nixl/{instance_id}"


def disagg_settings_key(namespace: str) -> str:
    """The conditional-disaggregation knobs frontends watch (changed at run time, no lease)."""
    return f"tandem/{namespace}/disagg/settings"
