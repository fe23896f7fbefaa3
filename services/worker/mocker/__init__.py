"""The mocker engine: simulated KV cache, batching and timing for scale tests (no model)."""

from .config import MockerConfig
from .engine import MockerEngine, create_engine

__all__ = ["MockerConfig", "MockerEngine", "create_engine"]
