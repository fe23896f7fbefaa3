"""Warm starts: a child with `preload` runs from a spare interpreter, with its own argv and env."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tandem.launcher.supervisor import ChildSpec, Supervisor

from tests.support.checks import wait_until

# Writes what it saw, then stays (an exit would be restarted); `wave` (stdlib, imported by
# nothing else) tells a spare that preloaded it.
PROBE = """
import json, os, pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text(json.dumps({
    "argv": sys.argv[1:], "x": os.environ.get("PROBE_X"), "name": __name__,
    "preloaded": "wave" in sys.modules,
}))
time.sleep(60)
"""


async def test_the_second_child_starts_warm_with_its_own_flags_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "warm_probe.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    caplog.set_level(logging.INFO, logger="tandem.launcher.supervisor")
    outs = [tmp_path / "out0.json", tmp_path / "out1.json"]
    supervisor = Supervisor(grace_seconds=10)
    try:
        for i, out in enumerate(outs):
            spec = ChildSpec.python_module(f"p{i}", "warm_probe", [str(out), "--flag"])
            spec.env, spec.preload = {"PROBE_X": str(i)}, ("wave",)
            await supervisor.start(spec)
        await wait_until(lambda: all(o.exists() and o.read_text() for o in outs), 60, "both probes")
        spare = supervisor._warm._spares[("wave",)]  # started when p1 took the first one
    finally:
        await supervisor.stop()
    cold, warm = (json.loads(o.read_text()) for o in outs)
    assert cold == {"argv": [str(outs[0]), "--flag"], "x": "0", "name": "__main__",
                    "preloaded": False}  # fmt: skip
    assert warm == {"argv": [str(outs[1]), "--flag"], "x": "1", "name": "__main__",
                    "preloaded": True}  # fmt: skip
    assert "started p0 (pid" in caplog.text and "cold (no spare ready)" in caplog.text
    assert "warm" in next(line for line in caplog.text.splitlines() if "started p1" in line)
    assert spare.returncode is not None  # stop() ended it too
