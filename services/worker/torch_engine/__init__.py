"""Embedded PyTorch engine: a Llama-family model over a paged KV cache, on CPU or CUDA.

- `config.py`: `TorchEngineConfig` (the `--model-path`, `--dtype`, ... flags).
- `engine.py`: `TorchEngine` / `create_engine`: engine thread, async streams, stats.
- `parts.py`: what starting builds (model, KV cache, scheduler, request limits).
- `messages.py`: what callers post to the engine thread's inbox.
- `runner.py`: `TorchSequence` (a request's generator and stream); scheduled batch -> model
  inputs (slots, block tables, masks) -> tokens.
- `streams.py`: outputs from the engine thread to each caller's event loop.
- `model.py`: the decoder and its paged attention; `linear.py`: packed bf16 matmuls.
- `sampling.py`: greedy / temperature / top-k / top-p, per-request seeds, logprobs.
- `loader.py`, `gguf_loader.py`, `safetensors_loader.py`, `model_config.py`: weights.
KV blocks and the prefix cache are `tandem.worker.block_manager.BlockManager`'s; continuous
batching (token budget, chunked prefill, preemption) is `tandem.worker.scheduler.Scheduler`'s.
"""

from .config import TorchEngineConfig
from .engine import TorchEngine, create_engine

__all__ = ["TorchEngine", "TorchEngineConfig", "create_engine"]
