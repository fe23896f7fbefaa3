"""The `tandem` command: `tandem up` runs a local cluster; `tandem <service>` runs one service.

`tandem frontend|worker|router|planner ...` is what a container runs: it
calls that service's `main(argv)`. `tandem up` is in `up.py`; `tandem
simulate` and `tandem router tune` (the fleet simulator) in `sim_commands.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import Sequence

from tandem.runtime.config import parse_known_config
from tandem.runtime.logs import setup_logging

from .up import UpConfig, run_up

SERVICES = {
    "frontend": ("tandem.frontend.__main__", "OpenAI-compatible HTTP frontend"),
    "worker": (
        "tandem.worker.__main__",
        "a worker: gRPC server in front of an engine (torch or mocker)",
    ),
    "router": ("tandem.router.__main__", "standalone KV-aware router service (gRPC)"),
    "planner": (
        "tandem.planner.__main__",
        "autoscaler (load or SLA targets): writes each model's desired worker count to etcd",
    ),
    "operator": (
        "tandem.operator.__main__",
        "Kubernetes operator: TandemDeployment resources into Deployments, Services, ConfigMaps",
    ),
}


def _usage() -> str:
    lines = ["usage: tandem <command> [flags]", "", "commands:",
             "  up          run a local cluster (nats, etcd, workers, frontend) on http://localhost:8000/v1"]  # fmt: skip
    lines += [f"  {name:<11} {doc}" for name, (_, doc) in SERVICES.items()]
    lines += ["  simulate    replay a Mooncake trace on a simulated fleet: the real router, N simulated mocker workers",
              "  router tune search the kv router's knobs for a trace on the simulator; prints the best settings",
              "  profile     measure one worker's TTFT and ITL into the profile `tandem planner --mode sla` reads"]  # fmt: skip
    lines += ["", "`tandem <command> --help` lists each command's flags."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "profile":
        from .profile_command import profile_main

        return profile_main(rest)
    if command == "simulate" or (command == "router" and rest[:1] == ["tune"]):
        from . import sim_commands  # loads the router and the mocker: only when asked

        if command == "simulate":
            return sim_commands.simulate_main(rest)
        return sim_commands.tune_main(rest[1:])
    if command in SERVICES:
        module = importlib.import_module(SERVICES[command][0])
        return int(module.main(rest) or 0)
    if command == "up":
        config, worker_args = parse_known_config(UpConfig, rest, prog="tandem up")
        setup_logging(config.log_level, component="up")
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(run_up(config, worker_args))
        return 130
    print(f"tandem: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
