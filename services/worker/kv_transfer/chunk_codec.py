"""`KvBlocksChunk` (proto/kv_transfer.proto) encoded and parsed by hand for the data chunks.

A data chunk is megabytes of block bytes behind a few bytes of header.
Protobuf would copy the payload into a message, again into its
serialization, and twice more on the way back out; here the sender joins
the field tags and lengths with the blocks' regions in one copy, and the
receiver gets the payload as a view of the received buffer. The bytes on
the wire are exactly what protobuf writes for `KvBlocksChunk(num_blocks=n,
data=...)`; a chunk encoded any other way (fields reordered, unknown fields,
a header) is parsed by protobuf instead, so every conforming sender works.
"""

from __future__ import annotations

from typing import NamedTuple

from tandem.runtime.wire import kv_transfer_pb2

_NUM_BLOCKS_TAG = 0x10  # field 2, varint
_DATA_TAG = 0x1A  # field 3, length-delimited


class ParsedChunk(NamedTuple):
    """One received `KvBlocksChunk`: its header (first chunk only) or its blocks' bytes."""

    header: kv_transfer_pb2.KvTransferHeader | None
    num_blocks: int
    data: memoryview


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def data_prefix(num_blocks: int, num_bytes: int) -> bytes:
    """The bytes before a data chunk's payload: num_blocks, then data's tag and length."""
    return (
        bytes((_NUM_BLOCKS_TAG,)) + _varint(num_blocks) + bytes((_DATA_TAG,)) + _varint(num_bytes)
    )


def encode_header(header: kv_transfer_pb2.KvTransferHeader) -> bytes:
    return kv_transfer_pb2.KvBlocksChunk(header=header).SerializeToString()


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, next position); (-1, pos) where no whole varint of at most 10 bytes starts at pos."""
    value, shift = 0, 0
    for i in range(pos, min(pos + 10, len(buf))):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    return -1, pos


def parse_chunk(raw: bytes) -> ParsedChunk:
    """The chunk in `raw`; raises `ValueError` where it is no `KvBlocksChunk`."""
    buf = memoryview(raw)
    if len(buf) > 2 and buf[0] == _NUM_BLOCKS_TAG:
        num_blocks, pos = _read_varint(buf, 1)
        if num_blocks >= 0 and pos < len(buf) and buf[pos] == _DATA_TAG:
            length, start = _read_varint(buf, pos + 1)
            if length >= 0 and start + length == len(buf):
                return ParsedChunk(None, num_blocks, buf[start:])
    try:
        msg = kv_transfer_pb2.KvBlocksChunk.FromString(raw)
    except Exception as exc:  # protobuf's DecodeError
        raise ValueError(f"not a KvBlocksChunk: {exc}") from None
    header = msg.header if msg.HasField("header") else None
    return ParsedChunk(header, msg.num_blocks, memoryview(msg.data))
