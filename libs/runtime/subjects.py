"""NATS subject and stream names (docs/contracts.md, NATS): the only place they are spelled."""

from __future__ import annotations


def kv_stream(namespace: str) -> str:
    """JetStream stream holding every worker's KV events."""
    return f"TANDEM_KV_{namespace}".replace(".", "_").replace("-", "_")


def kv_subject(namespace: str, instance_id: str) -> str:
    return f"tandem.{namespace}.kv.{instance_id}"


def kv_subjects_all(namespace: str) -> str:
    return f"tandem.{namespace}.kv.*"


def load_subject(namespace: str, instance_id: str) -> str:
    return f"tandem.{namespace}.load.{instance_id}"


def load_subjects_all(namespace: str) -> str:
    return f"tandem.{namespace}.load.*"


def router_active_subject(namespace: str) -> str:
    """Active-load updates shared between router replicas."""
    return f"tandem.{namespace}.router.active"


def prefill_stream(namespace: str) -> str:
    return f"TANDEM_PREFILL_{namespace}".replace(".", "_").replace("-", "_")


def prefill_subject(namespace: str, model: str) -> str:
    return f"tandem.{namespace}.prefill.{model.replace('.', '_')}"


def prefill_job_subject(namespace: str, model: str, prefill_instance_id: str) -> str:
    """Prefill jobs for one prefill worker of `model` (its durable consumer reads only these)."""
    return f"{prefill_subject(namespace, model)}.{prefill_instance_id}"


def prefill_model_subjects(namespace: str, model: str) -> str:
    """Every prefill worker's jobs of `model`: the queue depth the conditional rule reads."""
    return f"{prefill_subject(namespace, model)}.*"


def prefill_subjects_all(namespace: str) -> str:
    return f"tandem.{namespace}.prefill.>"
