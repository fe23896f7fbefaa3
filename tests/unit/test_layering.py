"""Lower layers never import higher ones: runtime < services < launcher.

`libs/runtime` imports no service and not the launcher; a service imports
neither the launcher nor another service, except that the frontend embeds
the router library. Imports inside functions count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("frontend", "router", "worker", "planner")
ALLOWED = {("frontend", "router")}  # the frontend embeds the router library


def _packages() -> dict[str, Path]:
    """Top-level `tandem.*` package name -> its directory (as pyproject.toml maps them)."""
    found = {"runtime": ROOT / "libs" / "runtime"}
    found |= {p.name: p for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()}
    return found


def _imports(package: str, root: Path, path: Path) -> Iterator[tuple[str, int]]:
    """(absolute module name, line) of every import in `path`, relative ones resolved."""
    parts = ["tandem", package, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    else:
        parts.pop()  # a module's own package is where its relative imports start
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level + 1]
                yield ".".join([*base, *([node.module] if node.module else [])]), node.lineno
            elif node.module:
                yield node.module, node.lineno


def _tandem_package(module: str) -> str | None:
    names = module.split(".")
    return names[1] if len(names) > 1 and names[0] == "tandem" else None


def _forbidden(importer: str, imported: str) -> bool:
    if imported == importer or imported == "runtime":
        return False
    if importer == "runtime":
        return True
    if importer in SERVICES:
        return (importer, imported) not in ALLOWED
    return False  # the launcher sits above everything


def test_no_layer_imports_a_higher_one() -> None:
    packages = _packages()
    assert {"runtime", "launcher", *SERVICES} <= packages.keys()
    violations = []
    for package, root in sorted(packages.items()):
        for path in sorted(root.rglob("*.py")):
            if "wire" in path.relative_to(root).parts:
                continue  # generated protobuf code
            for module, line in _imports(package, root, path):
                imported = _tandem_package(module)
                if imported is not None and _forbidden(package, imported):
                    violations.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "sub" / "mod.py"
    module.parent.mkdir()
    module.write_text("def f():\n    from ...router import x\n    from . import y\n")
    found = [name for name, _ in _imports("frontend", tmp_path, module)]
    assert found == ["tandem.router", "tandem.frontend.sub"]
