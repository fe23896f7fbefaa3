"""Engines by name. Each entry names a module exposing a config dataclass and
`create_engine(config, sink) -> BaseEngine`; modules are imported only when
chosen, so the worker runs the mocker without torch installed."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engine import BaseEngine
from .kv_event_sink import KvEventSink

EngineFactory = Callable[[Any, KvEventSink | None], BaseEngine]


@dataclass(frozen=True, slots=True)
class EngineEntry:
    """Where an engine lives: `module.<config_class>` and `module.create_engine`.

    `hosts_many`: several engines of this kind fit in one process (`--num-workers`);
    an engine that uses every core or a whole GPU does not.
    """

    module: str
    config_class: str
    hosts_many: bool = False

    def load(self) -> tuple[type[Any], EngineFactory]:
        mod = importlib.import_module(self.module)
        return getattr(mod, self.config_class), mod.create_engine


ENGINES: dict[str, EngineEntry] = {
    "torch": EngineEntry("tandem.worker.torch_engine", "TorchEngineConfig"),
    "mocker": EngineEntry("tandem.worker.mocker", "MockerConfig", hosts_many=True),
}


class EngineUnavailable(RuntimeError):
    """The named engine is unknown or cannot be imported here (e.g. torch missing)."""


def load_engine(name: str) -> tuple[type[Any], EngineFactory]:
    """The config class and factory of engine `name`."""
    entry = ENGINES.get(name)
    if entry is None:
        raise EngineUnavailable(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}")
    try:
        return entry.load()
    except (ImportError, AttributeError) as exc:
        raise EngineUnavailable(f"engine {name!r} is not available: {exc}") from exc
