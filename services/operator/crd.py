"""The `TandemDeployment` custom resource definition, with its OpenAPI v3 schema.

`deploy/k8s/base/crd.yaml` is this, written by `tandem operator crd` (a test
fails when the two differ). The enums come from `spec.py`, which checks
the same rules again in the operator.
"""

from __future__ import annotations

from typing import Any

from .spec import (
    DEFAULT_ETCD,
    DEFAULT_NATS,
    DEFAULT_PLANNER_ACCOUNT,
    DEPLOYMENT_MODES,
    ENGINES,
    KV_MEDIA,
    KV_TRANSPORTS,
    PLANNER_MODES,
    SERVICE_TYPES,
)

GROUP = "tandem.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TandemDeployment"
PLURAL = "tandemdeployments"
SINGULAR = "tandemdeployment"
SHORT_NAMES = ["tdep"]


def _quantities() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        },
    }


def _resources() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Container requests and limits, as in a pod spec.",
        "properties": {"requests": _quantities(), "limits": _quantities()},
    }


def _role(what: str, replicas: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "description": what,
        "properties": {
            "replicas": {"type": "integer", "minimum": 0, "default": replicas},
            "resources": _resources(),
            "image": {"type": "string", "description": "Container image; empty = the default."},
            "extraArgs": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Flags appended to the role's command line.",
            },
            **extra,
        },
    }


def _spec_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["model"],
        "properties": {
            "model": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Model name served (the workers' model card name).",
                    },  # fmt: skip
                    "path": {
                        "type": "string",
                        "description": "GGUF file or safetensors directory inside the worker image; empty = the bundled model.",
                    },  # fmt: skip
                },
            },
            "engine": {"type": "string", "enum": list(ENGINES), "default": "torch"},
            "deploymentMode": {
                "type": "string",
                "enum": list(DEPLOYMENT_MODES),
                "default": "aggregated",
            },  # fmt: skip
            "tandemNamespace": {
                "type": "string",
                "description": "Tandem namespace (etcd keys, NATS subjects); empty = the resource's name.",
            },  # fmt: skip
            "frontend": _role(
                "The OpenAI frontend.",
                1,
                routerMode={"type": "string", "default": "kv"},
                serviceType={"type": "string", "enum": list(SERVICE_TYPES), "default": "ClusterIP"},
            ),
            "worker": _role("Workers of deploymentMode aggregated.", 1),
            "prefill": _role("Prefill workers of deploymentMode disaggregated.", 1),
            "decode": _role("Decode workers of deploymentMode disaggregated.", 1),
            "kvCache": {
                "type": "object",
                "properties": {
                    "blockSize": {"type": "integer", "minimum": 1, "default": 16},
                    "transport": {
                        "type": "string",
                        "enum": list(KV_TRANSPORTS),
                        "description": "How prefill and decode workers move KV blocks; unset = the workers' default.",
                    },  # fmt: skip
                    "tiers": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["medium"],
                            "properties": {
                                "medium": {"type": "string", "enum": list(KV_MEDIA)},
                                "blocks": {
                                    "type": "integer",
                                    "minimum": 0,
                                    "description": "KV blocks in this tier; 0 = the engine's default.",
                                },  # fmt: skip
                            },
                        },
                    },
                },
            },
            "planner": {
                "type": "object",
                "description": "The planner: sizes the worker pool and scales its Deployment.",
                "properties": {
                    "enabled": {"type": "boolean", "default": False},
                    "mode": {"type": "string", "enum": list(PLANNER_MODES), "default": "load"},
                    "minWorkers": {"type": "integer", "minimum": 1, "default": 1},
                    "maxWorkers": {"type": "integer", "minimum": 1, "default": 8},
                    "adjustmentIntervalSeconds": {
                        "type": "number",
                        "exclusiveMinimum": True,
                        "minimum": 0,
                        "default": 10,
                    },  # fmt: skip
                    "ttftTargetMs": {"type": "number", "minimum": 0},
                    "itlTargetMs": {"type": "number", "minimum": 0},
                    "profileConfigMap": {
                        "type": "string",
                        "description": "mode sla: ConfigMap with the profile.json `tandem profile` wrote.",
                    },  # fmt: skip
                    "image": {"type": "string"},
                    "resources": _resources(),
                    "serviceAccountName": {"type": "string", "default": DEFAULT_PLANNER_ACCOUNT},
                },
            },
            "infrastructure": {
                "type": "object",
                "properties": {
                    "nats": {"type": "string", "default": DEFAULT_NATS},
                    "etcd": {"type": "string", "default": DEFAULT_ETCD},
                },
            },
        },
    }


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition object, as `kubectl apply` takes it."""
    status = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "description": "Written by the operator (kopf): what the last reconcile did.",
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
            },  # fmt: skip
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
                        {"name": "Engine", "type": "string", "jsonPath": ".spec.engine"},
                        {"name": "Mode", "type": "string", "jsonPath": ".spec.deploymentMode"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A Tandem serving deployment: frontend, workers, planner.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _spec_schema(),
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }
