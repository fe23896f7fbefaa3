"""KServe v2 tensors: an input's elements out of a request, a BYTES output into a response.

A tensor's elements travel either in `InferTensorContents` (the repeated field
of its datatype) or, for every input of a request at once, in
`raw_input_contents` (one entry per input: little-endian elements; a BYTES
element is a 4-byte little-endian length and that many bytes). tritonclient
sends raw contents; other clients send typed ones. Both are read here, and
whatever does not add up (an element count that is not the shape's, a raw
entry of the wrong size, a datatype we cannot read) is an `InvalidRequestError`
naming the tensor.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, TypeAlias

from tandem.runtime.wire.kserve import grpc_service_pb2 as pb

from ..errors import InvalidRequestError

InputTensor: TypeAlias = pb.ModelInferRequest.InferInputTensor

# datatype -> (struct code of one raw element, the InferTensorContents field of its values)
_FIXED: dict[str, tuple[str, str]] = {
    "BOOL": ("?", "bool_contents"),
    "INT8": ("b", "int_contents"),
    "INT16": ("h", "int_contents"),
    "INT32": ("i", "int_contents"),
    "INT64": ("q", "int64_contents"),
    "UINT8": ("B", "uint_contents"),
    "UINT16": ("H", "uint_contents"),
    "UINT32": ("I", "uint_contents"),
    "UINT64": ("Q", "uint64_contents"),
    "FP16": ("e", ""),  # raw only: no contents field holds 16-bit floats
    "FP32": ("f", "fp32_contents"),
    "FP64": ("d", "fp64_contents"),
}
INTEGER_TYPES = frozenset(t for t in _FIXED if t.startswith(("INT", "UINT")))
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
BYTES = "BYTES"
_LENGTH = struct.Struct("<I")


def element_count(tensor: InputTensor) -> int:
    """The number of elements `tensor`'s shape holds."""
    if any(dim < 0 for dim in tensor.shape):
        raise InvalidRequestError(
            f"input '{tensor.name}' has a negative dimension in its shape {list(tensor.shape)}",
            param=tensor.name,
        )
    return math.prod(tensor.shape)


def read_input(tensor: InputTensor, raw: bytes | None) -> list[Any]:
    """`tensor`'s elements, flattened: `bytes` for BYTES, else bool, int or float.

    `raw` is its entry of `raw_input_contents` when the request uses them.
    """
    count = element_count(tensor)
    datatype = tensor.datatype
    if datatype == BYTES:
        values = (
            _split_bytes(tensor.name, raw)
            if raw is not None
            else list(tensor.contents.bytes_contents)
        )
    elif datatype in _FIXED:
        code, field = _FIXED[datatype]
        if raw is not None:
            values = _unpack(tensor.name, datatype, code, raw)
        elif field:
            values = list(getattr(tensor.contents, field))
        else:
            raise InvalidRequestError(
                f"input '{tensor.name}' of type {datatype} must travel in raw_input_contents",
                param=tensor.name,
            )
    else:
        raise InvalidRequestError(
            f"input '{tensor.name}' has datatype {datatype!r}, which this server cannot read",
            param=tensor.name,
        )
    if len(values) != count:
        raise InvalidRequestError(
            f"input '{tensor.name}' holds {len(values)} elements but its shape "
            f"{list(tensor.shape)} says {count}",
            param=tensor.name,
        )
    return values


def _unpack(name: str, datatype: str, code: str, raw: bytes) -> list[Any]:
    size = struct.calcsize(code)
    if len(raw) % size:
        raise InvalidRequestError(
            f"input '{name}': {len(raw)} raw bytes are not a whole number of {datatype} "
            f"elements ({size} bytes each)",
            param=name,
        )
    return list(struct.unpack(f"<{len(raw) // size}{code}", raw))


def _split_bytes(name: str, raw: bytes) -> list[bytes]:
    values = []
    offset, end = 0, len(raw)
    while offset < end:
        if end - offset < _LENGTH.size:
            raise InvalidRequestError(
                f"input '{name}': raw BYTES contents end inside an element's length", param=name
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += _LENGTH.size
        if length > end - offset:
            raise InvalidRequestError(
                f"input '{name}': a raw BYTES element says {length} bytes, {end - offset} are left",
                param=name,
            )
        values.append(raw[offset : offset + length])
        offset += length
    return values


def bytes_tensor_raw(values: Sequence[bytes]) -> bytes:
    """BYTES elements as one raw contents entry (each length-prefixed)."""
    return b"".join(_LENGTH.pack(len(value)) + value for value in values)


def add_bytes_output(
    response: pb.ModelInferResponse, name: str, values: Sequence[bytes], shape: Sequence[int]
) -> None:
    """Append the BYTES output `name` (raw contents, as Triton answers) to `response`."""
    output = response.outputs.add()
    output.name = name
    output.datatype = BYTES
    output.shape.extend(shape)
    response.raw_output_contents.append(bytes_tensor_raw(values))
