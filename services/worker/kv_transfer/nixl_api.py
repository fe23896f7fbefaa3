"""Loading NIXL's Python API, whichever wheel provides it, with one clear error where it cannot."""

from __future__ import annotations

import importlib
from types import ModuleType

from tandem.runtime.startup import StartupError

# nixl-cu12 and nixl-cu13 install `nixl_cu12` / `nixl_cu13`; the `nixl` meta package `nixl`.
_MODULES = ("nixl_cu12", "nixl_cu13", "nixl")


class NixlUnavailable(StartupError):
    """NIXL (or its UCX backend) cannot load on this machine."""


def load_nixl() -> ModuleType:
    """The NIXL API module (`nixl_agent`, `nixl_agent_config`, ...)."""
    errors = []
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if hasattr(module, "nixl_agent"):
            return module
        errors.append(f"{name}: no nixl_agent")
    raise NixlUnavailable(
        "--kv-transport nixl: NIXL cannot load here (" + "; ".join(errors) + "); "
        "install it with `make install` (nixl-cu12) or start with --kv-transport grpc"
    )


def nixl_available() -> bool:
    try:
        load_nixl()
    except NixlUnavailable:
        return False
    return True
