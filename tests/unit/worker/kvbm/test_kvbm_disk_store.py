"""Block files: a round trip, and every torn, corrupt or foreign file found and deleted."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from tandem.worker.kv_transfer.layout import KvLayout
from tandem.worker.kvbm import disk_store
from tandem.worker.kvbm.disk_store import HEADER_SIZE, DiskStore, file_name, layout_fingerprint

BLOCK = 4096
LAYOUT = KvLayout(
    block_size=16, num_layers=2, num_kv_heads=2, head_dim=8, dtype="float16", num_blocks=10
)
FP = layout_fingerprint(LAYOUT, "m")
A, B = 0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210


def payload(seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 251 for i in range(BLOCK))


@pytest.fixture
def store(tmp_path: Path) -> DiskStore:
    return DiskStore(str(tmp_path / "kv"), FP, BLOCK)


def path_of(store: DiskStore, h: int) -> Path:
    return Path(store.path) / file_name(h)


def read(store: DiskStore, h: int) -> bytes | None:
    out = bytearray(BLOCK)
    return bytes(out) if store.read_into(h, memoryview(out)) else None


def test_round_trip_and_usage(store: DiskStore) -> None:
    store.write(A, 1, None, payload(1))
    store.write(B, 2, A, memoryview(payload(2)))
    assert read(store, A) == payload(1) and read(store, B) == payload(2)
    assert path_of(store, A).name == "0123456789abcdef.kvb"
    assert sorted(os.listdir(store.path)) == sorted([file_name(A), file_name(B)])  # no temps
    assert store.usage_bytes() == 2 * (HEADER_SIZE + BLOCK)
    store.delete(A)
    assert not path_of(store, A).exists() and store.usage_bytes() == HEADER_SIZE + BLOCK
    assert read(store, A) is None  # missing


def test_a_failed_write_never_leaves_the_final_name(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(disk_store.os, "replace", fail)
    with pytest.raises(OSError):
        store.write(A, 1, None, payload(1))
    assert os.listdir(store.path) == [] and store.usage_bytes() == 0
    with pytest.raises(ValueError):
        store.write(A, 1, None, b"short")


def corrupt_payload(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[HEADER_SIZE + 100] ^= 0x01
    p.write_bytes(data)


def truncate(p: Path) -> None:
    os.truncate(p, HEADER_SIZE + BLOCK - 1)


def bad_header(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[30] ^= 0x40  # inside the local hash: only the header checksum can tell
    p.write_bytes(data)


def short_header(p: Path) -> None:
    os.truncate(p, HEADER_SIZE - 3)


@pytest.mark.parametrize("damage", [corrupt_payload, truncate, bad_header, short_header])
def test_a_damaged_file_is_refused_and_deleted(
    store: DiskStore, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    store.write(A, 1, None, payload(1))
    damage(path_of(store, A))  # type: ignore[operator]
    with caplog.at_level(logging.WARNING):
        assert read(store, A) is None
    assert not path_of(store, A).exists() and store.usage_bytes() == 0
    assert "kvbm disk block dropped" in caplog.text


def test_another_layouts_file_is_refused(store: DiskStore) -> None:
    other = layout_fingerprint(LAYOUT, "another-model")
    DiskStore(store.path, other, BLOCK).write(A, 1, None, payload(1))
    assert read(store, A) is None and not path_of(store, A).exists()


def test_a_file_under_another_blocks_name_is_refused(store: DiskStore) -> None:
    store.write(A, 1, None, payload(1))
    os.replace(path_of(store, A), path_of(store, B))
    assert read(store, B) is None and not path_of(store, B).exists()


def test_scan_keeps_good_files_and_deletes_the_rest(store: DiskStore) -> None:
    hashes = [0x10 + i for i in range(6)]
    for i, h in enumerate(hashes):
        store.write(h, 100 + i, hashes[i - 1] if i else None, payload(i))
    truncate(path_of(store, hashes[1]))
    bad_header(path_of(store, hashes[2]))
    DiskStore(store.path, FP + 1, BLOCK).write(hashes[3], 1, None, payload(3))  # foreign
    os.replace(path_of(store, hashes[4]), path_of(store, 0x99))  # under another name
    corrupt_payload(path_of(store, hashes[5]))  # scan reads headers only: found on read
    temp = Path(store.path) / (file_name(0x77) + ".tmp")
    temp.write_bytes(b"half a write")
    unrelated = Path(store.path) / "notes.txt"
    unrelated.write_text("not ours")

    restarted = DiskStore(store.path, FP, BLOCK)
    found = list(restarted.scan())
    assert sorted(found) == [(hashes[0], 100, None), (hashes[5], 105, hashes[4])]
    assert sorted(os.listdir(store.path)) == sorted(
        [file_name(hashes[0]), file_name(hashes[5]), "notes.txt"]
    )
    assert restarted.usage_bytes() == 2 * (HEADER_SIZE + BLOCK)
    assert read(restarted, hashes[0]) == payload(0)
    assert read(restarted, hashes[5]) is None and restarted.usage_bytes() == HEADER_SIZE + BLOCK


def test_scan_lists_files_oldest_written_first(store: DiskStore) -> None:
    for h in (3, 1, 2):
        store.write(h, h, None, payload(h))
    for age, h in enumerate((3, 1, 2)):
        os.utime(path_of(store, h), (1_000_000 + age, 1_000_000 + age))
    assert [h for h, _, _ in store.scan()] == [3, 1, 2]


def test_the_fingerprint_names_the_block_shape_and_model_not_the_pool_size() -> None:
    import dataclasses

    assert layout_fingerprint(dataclasses.replace(LAYOUT, num_blocks=999), "m") == FP
    assert layout_fingerprint(LAYOUT, "m2") != FP
    assert layout_fingerprint(dataclasses.replace(LAYOUT, dtype="bfloat16"), "m") != FP
    assert layout_fingerprint(dataclasses.replace(LAYOUT, block_size=32), "m") != FP
    assert 0 <= FP < 2**64
