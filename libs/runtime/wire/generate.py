"""Generate Python code for proto/*.proto into this package.

Run as `python -m tandem.runtime.wire.generate` (the Makefile's `proto` target
and `tandem` itself on first use call it). grpc_tools writes absolute imports
(`import worker_pb2`); they are rewritten to relative ones so the generated
modules live in this package and nowhere else.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

WIRE_DIR = Path(__file__).resolve().parent
PROTO_DIR = WIRE_DIR.parents[2] / "proto"


def generate() -> list[Path]:
    from grpc_tools import protoc  # imported here: only needed at build time

    protos = sorted(PROTO_DIR.glob("*.proto"))
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
    names = [p.stem for p in protos]
    pattern = re.compile(rf"^import ({'|'.join(names)})_pb2 as", re.MULTILINE)
    written = sorted(WIRE_DIR.glob("*_pb2*.py")) + sorted(WIRE_DIR.glob("*_pb2.pyi"))
    for path in written:
        text = path.read_text()
        path.write_text(pattern.sub(r"from . import \1_pb2 as", text))
    return written


def is_stale() -> bool:
    """True when a generated module is missing or older than its .proto."""
    for proto in PROTO_DIR.glob("*.proto"):
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            out = WIRE_DIR / f"{proto.stem}{suffix}"
            if not out.exists() or out.stat().st_mtime < proto.stat().st_mtime:
                return True
    return False


if __name__ == "__main__":
    for p in generate():
        print(p.relative_to(WIRE_DIR.parents[2]), file=sys.stderr)
