"""Generated code for proto/kserve/*.proto (KServe v2 / Triton's `inference` package).

Its messages live in this package's own descriptor pool, not protobuf's
default one: every KServe client library (tritonclient, kserve) registers the
same `inference.*` names there, and a process holding both would fail on them.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool as _descriptor_pool

_POOL = _descriptor_pool.DescriptorPool()


def descriptor_pool() -> _descriptor_pool.DescriptorPool:
    """The pool the generated `*_pb2` modules of this package register in."""
    return _POOL
