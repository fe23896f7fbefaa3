"""etcd key layout: the only place the keys are spelled (subjects.py is the NATS counterpart).

    tandem/{namespace}/instances/{component}/{instance_id}   InstanceInfo JSON, under the owner's lease
    tandem/{namespace}/models/{model}                         model card JSON, under the worker's lease
    tandem/{namespace}/planner/replicas/{model}               the planner's replica target JSON, no lease

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
