"""Embedded PyTorch engine: a Llama-family model over a paged KV cache, on CPU or CUDA."""

from .config import TorchEngineConfig
from .engine import TorchEngine, create_engine

__all__ = ["TorchEngine", "TorchEngineConfig", "create_engine"]
