"""`tandem operator`: reconcile TandemDeployments until SIGTERM; `crd` and `render` print YAML.

- `tandem operator [flags]` runs the operator (kopf) against the cluster.
- `tandem operator crd` prints the CustomResourceDefinition (deploy/k8s/base/crd.yaml).
- `tandem operator render -f FILE` prints the objects the TandemDeployments in FILE
  become, as `kubectl apply -f -` takes them; nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from tandem.runtime import kube_client
from tandem.runtime.config import parse_config
from tandem.runtime.logs import setup_logging
from tandem.runtime.service_main import run_service

from .config import OperatorConfig
from .crd import API_VERSION, KIND, crd_manifest
from .spec import SpecError

log = logging.getLogger("tandem.operator")
COMPONENT = "operator"


def _dump(objects: Sequence[Any]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True)


def render_main(argv: Sequence[str]) -> int:
    from .render import render

    parser = argparse.ArgumentParser(
        prog="tandem operator render",
        description="Print the objects the TandemDeployments in FILE become (no cluster needed).",
    )
    parser.add_argument("-f", "--filename", required=True, help="YAML file; - = standard input")
    parser.add_argument(
        "-n", "--namespace", default="", help="namespace of resources that name none"
    )
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d]
    except (OSError, yaml.YAMLError) as exc:
        print(f"tandem operator render: cannot read {args.filename}: {exc}", file=sys.stderr)
        return 2
    objects: list[Any] = []
    for doc in docs:
        if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
            continue
        if args.namespace and not doc.get("metadata", {}).get("namespace"):
            doc.setdefault("metadata", {})["namespace"] = args.namespace
        try:
            objects += render(doc)
        except SpecError as exc:
            name = doc.get("metadata", {}).get("name", "?")
            print(f"tandem operator render: {KIND} {name}: {exc}", file=sys.stderr)
            return 2
    if not objects:
        print(f"tandem operator render: no {KIND} ({API_VERSION}) in {args.filename}", file=sys.stderr)  # fmt: skip
        return 2
    sys.stdout.write(_dump(objects))
    return 0


async def serve(config: OperatorConfig, stop: asyncio.Event, ready: asyncio.Event) -> None:
    import kopf

    from .handlers import make_registry
    from .reconcile import Reconciler

    connection = await kube_client.connect(config.kubeconfig)
    reconciler = Reconciler(connection.api_client)
    namespaces = [] if config.all_namespaces else (config.watch_namespace or [connection.namespace])
    log.info(
        "operator starting watch=%s resync=%.0fs",
        "all-namespaces" if config.all_namespaces else ",".join(namespaces),
        config.resync_interval,
    )
    try:
        await kopf.operator(
            registry=make_registry(reconciler, config.resync_interval),
            clusterwide=config.all_namespaces,
            namespaces=namespaces,
            standalone=True,  # one replica (Recreate): no peering objects needed
            liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz"
            if config.health_port
            else None,  # fmt: skip
            stop_flag=stop,
            ready_flag=ready,
        )
    finally:
        await reconciler.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["crd"]:
        sys.stdout.write(_dump([crd_manifest()]))
        return 0
    if args[:1] == ["render"]:
        return render_main(args[1:])
    config = parse_config(OperatorConfig, args, prog="tandem operator")
    setup_logging(config.log_level, component=COMPONENT)
    return run_service(COMPONENT, lambda stop, ready: serve(config, stop, ready),
                       cancel_until_ready=True)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
