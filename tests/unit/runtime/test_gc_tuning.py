"""GC tuning is opt-in per process: freeze_heap does nothing until tune_gc was called."""

from __future__ import annotations

import subprocess
import sys

_CHECK = """
import gc
from tandem.runtime.gc_tuning import GEN0_THRESHOLD, freeze_heap, tune_gc

before = gc.get_threshold()
freeze_heap()
assert gc.get_freeze_count() == 0, "froze without tune_gc"
tune_gc()
assert gc.get_threshold() == (GEN0_THRESHOLD, *before[1:])
freeze_heap()
assert gc.get_freeze_count() > 0
"""


def test_freeze_heap_acts_only_after_tune_gc() -> None:
    subprocess.run([sys.executable, "-c", _CHECK], check=True, timeout=60)
