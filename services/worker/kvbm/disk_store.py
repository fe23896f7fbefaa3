"""The disk tier's bytes: one self-checking file per KV block under one directory.

A file is `<16 hex digits of the block hash>.kvb`: a fixed header, then the block's bytes
(layer 0's region, layer 1's, ...). The header names the block (its hashes), the layout
and model it belongs to (a fingerprint) and checksums of the payload and of itself, so a
torn, truncated, corrupted or foreign file is found and deleted, never read into the KV
cache. A file only ever gets its final name complete: it is written under a temporary
name in the same directory and renamed (`os.replace` is atomic within a file system).

Not shared: one worker owns a directory. write/read_into/delete run on one copy thread,
scan at start-up before it; usage_bytes may be read from any thread.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..kv_transfer.layout import KvLayout

log = logging.getLogger(__name__)

MAGIC = b"TKVB"
FORMAT_VERSION = 1
# magic, version, flags, fingerprint, block hash, local hash, parent hash, payload length,
# payload crc32, then the crc32 of everything before it.
_HEADER = struct.Struct("<4sHHQQQQQII")
HEADER_SIZE = _HEADER.size
_HAS_PARENT = 1
_SUFFIX = ".kvb"
_TEMP_SUFFIX = ".tmp"
_NAME = re.compile(r"^([0-9a-f]{16})\.kvb$")


def layout_fingerprint(layout: KvLayout, model: str) -> int:
    """A u64 naming what a block's bytes mean: the block shape, dtype, model and file format.

    `num_blocks` is left out: a worker restarted with a bigger or smaller device pool
    reads the same blocks. blake2b, not `hash()`: it must be the same in every process.
    """
    key = (
        f"v{FORMAT_VERSION}|{layout.block_size}|{layout.num_layers}|{layout.num_kv_heads}|"
        f"{layout.head_dim}|{layout.dtype}|{model}"
    )
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def file_name(block_hash: int) -> str:
    return f"{block_hash:016x}{_SUFFIX}"


@dataclass(frozen=True, slots=True)
class _Header:
    block_hash: int
    local_hash: int
    parent_hash: int | None
    payload_len: int
    payload_crc: int


class DiskStore:
    """Owns the block files under `path`: writes them atomically, verifies every read."""

    def __init__(self, path: str, fingerprint: int, block_bytes: int, fsync: bool = False) -> None:
        if block_bytes <= 0:
            raise ValueError("block_bytes must be positive")
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.fingerprint = fingerprint
        self.block_bytes = block_bytes
        # Off by default: a block file is a cache entry, so one lost to a power cut costs a
        # recompute, and the checksums catch whatever a crash leaves behind; an fsync per
        # block would hold every write to the device's flush latency.
        self.fsync = fsync
        self.file_bytes = HEADER_SIZE + block_bytes
        self._present: set[int] = set()  # hashes with a final file, for usage_bytes

    def write(
        self,
        block_hash: int,
        local_hash: int,
        parent_hash: int | None,
        payload: memoryview | bytes,
    ) -> None:
        """Write one block's file (replacing one of the same hash); OSError on failure."""
        data = memoryview(payload).cast("B")
        if data.nbytes != self.block_bytes:
            raise ValueError(f"{data.nbytes} bytes for a block of {self.block_bytes}")
        header = self._pack(block_hash, local_hash, parent_hash, data)
        final = self._path(block_hash)
        temp = final + _TEMP_SUFFIX
        try:
            # Unbuffered: the payload goes from `data` to the kernel in one write that
            # releases the GIL, with no copy into a Python-side buffer.
            with open(temp, "wb", buffering=0) as f:
                f.write(header)
                written = f.write(data)
                if written != data.nbytes:  # a short write (disk full) is an error here
                    raise OSError(f"short write: {written} of {data.nbytes} bytes")
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(temp, final)
        except BaseException:
            _unlink(temp)
            raise
        self._present.add(block_hash)

    def read_into(self, block_hash: int, out: memoryview) -> bool:
        """Read a block's payload into `out` (block_bytes long) after checking all of it.

        False when the file is missing, truncated, corrupt or not this layout's; such a
        file is deleted and a warning logged. On False `out` holds garbage: do not use it.
        """
        buf = memoryview(out).cast("B")
        if buf.nbytes != self.block_bytes:
            raise ValueError(f"a buffer of {buf.nbytes} bytes for a block of {self.block_bytes}")
        path = self._path(block_hash)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                raw = f.read(HEADER_SIZE)
                header, reason = self._check(raw, size, block_hash)
                if header is not None:
                    if _read_exact(f, buf) != self.block_bytes:
                        reason = "truncated payload"
                    elif _crc(buf) != header.payload_crc:
                        reason = "payload checksum mismatch"
        except FileNotFoundError:
            self._present.discard(block_hash)
            log.warning("kvbm disk block missing block_hash=%016x path=%s", block_hash, path)
            return False
        except OSError as exc:
            reason = f"read failed: {exc}"
        if reason:
            log.warning(
                "kvbm disk block dropped block_hash=%016x path=%s reason=%r",
                block_hash,
                path,
                reason,
            )
            self.delete(block_hash)
            return False
        return True

    def delete(self, block_hash: int) -> None:
        _unlink(self._path(block_hash))
        self._present.discard(block_hash)

    def scan(self) -> Iterator[tuple[int, int, int | None]]:
        """(hash, local hash, parent hash) of every valid block file, oldest written first.

        Reads headers only (payloads are checked when read). Deletes temporary files and
        block files whose header, length or fingerprint is wrong; leaves files of other
        names alone.
        """
        found: list[tuple[float, str, int]] = []
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.endswith(_SUFFIX + _TEMP_SUFFIX):
                    _unlink(entry.path)  # a write that never finished
                    continue
                match = _NAME.match(entry.name)
                if match is not None and entry.is_file(follow_symlinks=False):
                    found.append((entry.stat().st_mtime, entry.path, int(match.group(1), 16)))
        found.sort()  # oldest first: adopted in this order, LRU order survives a restart
        for _, path, block_hash in found:
            header, reason = self._read_header(path, block_hash)
            if header is None:
                log.warning("kvbm disk block dropped path=%s reason=%r", path, reason)
                _unlink(path)
                self._present.discard(block_hash)
                continue
            self._present.add(block_hash)
            yield header.block_hash, header.local_hash, header.parent_hash

    def usage_bytes(self) -> int:
        """Bytes of the block files this store knows of (written or found by scan)."""
        return len(self._present) * self.file_bytes

    # -- internals -----------------------------------------------------------

    def _path(self, block_hash: int) -> str:
        return os.path.join(self.path, file_name(block_hash))

    def _pack(
        self, block_hash: int, local_hash: int, parent_hash: int | None, data: memoryview
    ) -> bytes:
        flags = _HAS_PARENT if parent_hash is not None else 0
        fields = (
            MAGIC,
            FORMAT_VERSION,
            flags,
            self.fingerprint,
            block_hash,
            local_hash,
            parent_hash or 0,
            data.nbytes,
            _crc(data),
        )
        head = _HEADER.pack(*fields, 0)[: HEADER_SIZE - 4]
        return head + struct.pack("<I", zlib.crc32(head))

    def _read_header(self, path: str, block_hash: int) -> tuple[_Header | None, str]:
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                return self._check(f.read(HEADER_SIZE), size, block_hash)
        except OSError as exc:
            return None, f"read failed: {exc}"

    def _check(self, raw: bytes, file_size: int, block_hash: int) -> tuple[_Header | None, str]:
        """The header in `raw` if it is sound and describes this file, else why not."""
        if len(raw) < HEADER_SIZE:
            return None, "truncated header"
        magic, version, flags, fingerprint, h, local, parent, length, payload_crc, header_crc = (
            _HEADER.unpack(raw)
        )
        if magic != MAGIC:
            return None, "not a block file"
        if zlib.crc32(raw[: HEADER_SIZE - 4]) != header_crc:
            return None, "header checksum mismatch"
        if version != FORMAT_VERSION:
            return None, f"format version {version}"
        if fingerprint != self.fingerprint:
            return None, "another layout or model"
        if h != block_hash:
            return None, f"holds block {h:016x}"
        if length != self.block_bytes:
            return None, f"payload of {length} bytes"
        if file_size != HEADER_SIZE + length:
            return None, f"file of {file_size} bytes"
        return _Header(h, local, parent if flags & _HAS_PARENT else None, length, payload_crc), ""


def _crc(data: memoryview) -> int:
    # crc32 guards against torn and corrupted files, not against an adversary, so a
    # cryptographic hash is not needed; zlib's runs in C at GB/s and releases the GIL on
    # large buffers, so the engine thread keeps stepping while the copy thread checks.
    return zlib.crc32(data)


def _read_exact(f: io.FileIO, buf: memoryview) -> int:
    """Fill `buf` from the unbuffered file `f` (readinto releases the GIL); bytes read."""
    got = 0
    while got < buf.nbytes:
        n = f.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
