"""Garbage-collector settings of a serving process: a higher gen0 threshold, a frozen heap.

Every streamed token or message allocates short-lived containers (futures,
protobuf wrappers, lists, coroutine frames). With CPython's default gen0
threshold of 700 a busy process collects every few hundred microseconds, and
the objects of requests still in flight survive into older generations,
which are then scanned again and again together with the large long-lived
heap (engine, tokenizer tables, the modules of grpc, aiohttp and jinja2). A
higher gen0 threshold lets request garbage die young, and freezing the heap
once the long-lived state is built (after startup, after a model load) takes
it out of every later collection.

Only a process entry point opts in (`tune_gc`); a service embedded in another
process (tests) leaves that process's collector alone, since `freeze_heap`
does nothing until `tune_gc` was called.
"""

from __future__ import annotations

import gc

# Container allocations between gen0 collections (CPython default: 700).
GEN0_THRESHOLD = 50_000

_tuned = False


def tune_gc() -> None:
    """Raise the gen0 threshold and let `freeze_heap` act; call once at process start."""
    global _tuned
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    _tuned = True


def freeze_heap() -> None:
    """Move every object alive now out of the collector's view (after startup, model loads)."""
    if _tuned:
        gc.collect()
        gc.freeze()
