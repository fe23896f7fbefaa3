"""The frontend, planner and router run without torch: their images carry none.

Only the worker image installs torch (docker/worker.Dockerfile); `tandem
frontend`, `tandem planner` and `tandem router` start from an image without
it, through the same `tandem` command, so nothing they import may import torch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# `sys.modules["torch"] = None` makes every `import torch` raise ImportError, as in the images.
PROGRAM = """
import sys
sys.modules["torch"] = None
import tandem.launcher.cli, {module}
sys.argv = ["tandem", "{command}", "--help"]
tandem.launcher.cli.main()
"""


@pytest.mark.parametrize(
    ("command", "module"),
    [
        ("frontend", "tandem.frontend.app"),
        ("planner", "tandem.planner.service"),
        ("router", "tandem.router.service"),
    ],
)
def test_service_starts_without_torch(command: str, module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(command=command, module=module)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"usage: tandem {command}" in result.stdout
