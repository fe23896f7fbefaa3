"""Generate Python code for proto/**/*.proto into this package.

Run as `python -m tandem.runtime.wire.generate` (the Makefile's `proto` target
and `tandem` itself on first use call it). A proto in a folder of proto/
becomes a module in the same subpackage here (`proto/kserve/x.proto` ->
`wire/kserve/x_pb2.py`). grpc_tools writes absolute imports (`import
worker_pb2`, `from kserve import x_pb2`); they are rewritten to relative ones
so the generated modules live in this package and nowhere else.

The KServe protos (`proto/kserve/`) declare the `inference.*` messages that
every KServe client library (tritonclient, kserve) registers in protobuf's
default descriptor pool too; one process holding both would fail on the
duplicate names, so their modules use the private pool of `wire/kserve`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

WIRE_DIR = Path(__file__).resolve().parent
PROTO_DIR = WIRE_DIR.parents[2] / "proto"
# Subpackages whose generated modules register in the package's own descriptor pool.
PRIVATE_POOL_PACKAGES = ("kserve",)
_DEFAULT_POOL = "_descriptor_pool.Default()"


def _protos() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def _rewrite_imports(text: str, protos: list[Path]) -> str:
    """grpc_tools' absolute imports of our generated modules as relative ones.

    Only imports between protos of the same folder occur (and are allowed).
    """
    for proto in protos:
        rel = proto.relative_to(PROTO_DIR)
        module = f"{rel.stem}_pb2"
        package = ".".join(rel.parent.parts)
        absolute = f"from {package} import {module} as" if package else f"import {module} as"
        text = re.sub(rf"^{re.escape(absolute)}", f"from . import {module} as", text, flags=re.M)
    return text


def generate() -> list[Path]:
    from grpc_tools import protoc  # imported here: only needed at build time

    protos = _protos()
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={WIRE_DIR}",
        f"--pyi_out={WIRE_DIR}",
        f"--grpc_python_out={WIRE_DIR}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(WIRE_DIR.rglob("*_pb2*.py")) + sorted(WIRE_DIR.rglob("*_pb2.pyi"))
    for path in written:
        text = _rewrite_imports(path.read_text(), protos)
        if path.parent.relative_to(WIRE_DIR).parts[:1] in [(p,) for p in PRIVATE_POOL_PACKAGES]:
            text = text.replace(_DEFAULT_POOL, "_private_pool()")
            if "_private_pool()" in text:
                text = text.replace(
                    "from google.protobuf import descriptor_pool as _descriptor_pool\n",
                    "from google.protobuf import descriptor_pool as _descriptor_pool\n"
                    "from . import descriptor_pool as _private_pool\n",
                    1,
                )
        path.write_text(text)
    return written


def is_stale() -> bool:
    """True when a generated module is missing or older than its .proto."""
    for proto in _protos():
        out_dir = WIRE_DIR / proto.parent.relative_to(PROTO_DIR)
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            out = out_dir / f"{proto.stem}{suffix}"
            if not out.exists() or out.stat().st_mtime < proto.stat().st_mtime:
                return True
    return False


if __name__ == "__main__":
    for p in generate():
        print(p.relative_to(WIRE_DIR.parents[2]), file=sys.stderr)
