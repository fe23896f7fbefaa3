"""KV data plane: layouts, pairing, pools, descriptors, the receiving gate, planes over loopback gRPC."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
import torch
from tandem.runtime.wire import kv_transfer_pb2
from tandem.worker.kv_transfer import grpc_transport
from tandem.worker.kv_transfer.chunk_codec import _varint, data_prefix, encode_header, parse_chunk
from tandem.worker.kv_transfer.descriptor import KvDescriptor
from tandem.worker.kv_transfer.layout import KvLayout, PairingError, check_pairing
from tandem.worker.kv_transfer.nixl_api import nixl_available
from tandem.worker.kv_transfer.receiver import KvReceiver, TransferRefused
from tandem.worker.kv_transfer.transport import PeerInfo, TransferError, layout_msg

from tests.support.kv_transfer import TRANSPORTS, MemoryEtcd, block_digest, make_pool, serve_plane

LAYOUT = KvLayout(
    block_size=16, num_layers=30, num_kv_heads=3, head_dim=64, dtype="bfloat16", num_blocks=100
)


def test_layout_sizes() -> None:
    assert LAYOUT.bytes_per_layer_block == 16 * 2 * 3 * 64 * 2
    assert LAYOUT.bytes_per_block == 30 * LAYOUT.bytes_per_layer_block
    assert LAYOUT.bytes_per_token == LAYOUT.bytes_per_block // 16
    assert KvLayout.from_dict(LAYOUT.to_dict()) == LAYOUT


def test_layout_rejects_unknown_dtype() -> None:
    with pytest.raises(ValueError, match="dtype"):
        KvLayout(16, 30, 3, 64, "int4", 100)


def test_pairing_ignores_pool_size_only() -> None:
    other = KvLayout(16, 30, 3, 64, "bfloat16", num_blocks=7)
    check_pairing(LAYOUT, other, local_id="a", peer_id="b", block_ids=[0, 99])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"block_size": 32}, "block_size=16/32"),
        ({"dtype": "float32"}, "dtype=bfloat16/float32"),
        ({"num_kv_heads": 4}, "num_kv_heads=3/4"),
        ({"num_layers": 24}, "num_layers=30/24"),
    ],
)
def test_pairing_refuses_mismatch_with_log_line(
    change: dict[str, object], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    peer = KvLayout(**{**LAYOUT.to_dict(), **change})  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING), pytest.raises(PairingError, match=reason):
        check_pairing(LAYOUT, peer, local_id="dec", peer_id="pre", block_ids=[1])
    line = caplog.records[-1].getMessage()
    assert "kv pairing refused instance_id=dec peer=pre" in line and reason in line


def test_pairing_refuses_blocks_outside_pool() -> None:
    with pytest.raises(PairingError, match="outside the pool"):
        check_pairing(LAYOUT, LAYOUT, local_id="a", peer_id="b", block_ids=[3, 100])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_read_write_roundtrip(dtype: torch.dtype) -> None:
    src = make_pool(dtype=dtype, seed=1)
    dst = make_pool(dtype=dtype)
    data = src.read([5, 2, 9])
    assert len(data) == 3 * src.layout.bytes_per_block
    dst.write([0, 7, 3], data)
    for s, d in ((5, 0), (2, 7), (9, 3)):
        for layer in range(src.layout.num_layers):
            assert torch.equal(src.tensors[layer][s], dst.tensors[layer][d])
    assert block_digest(src, [5, 2, 9]) == block_digest(dst, [0, 7, 3])
    assert not dst.tensors[0][1].any()  # blocks not named stay untouched
    with pytest.raises(ValueError, match="expected"):
        dst.write([1], data)


def test_pool_regions_address_each_layer_block() -> None:
    pool = make_pool(num_blocks=8)
    rows = pool.regions([2, 5])
    bpl = pool.layout.bytes_per_layer_block
    assert rows.shape == (pool.layout.num_layers * 2, 3)
    for layer, tensor in enumerate(pool.tensors):
        assert int(rows[layer * 2, 0]) == tensor[2].data_ptr()
        assert int(rows[layer * 2 + 1, 0]) == tensor[5].data_ptr()
    assert set(rows[:, 1].tolist()) == {bpl}


def test_descriptor_json_roundtrip() -> None:
    d = KvDescriptor(
        "w1", "nixl", "127.0.0.1:5", LAYOUT, "w1-ab", b"\x00\xffmeta", [1, 2], 0, "DRAM"
    )
    assert KvDescriptor.from_json(d.to_json()) == d


async def test_receiver_gate() -> None:
    receiver = KvReceiver("dec")
    with pytest.raises(TransferRefused, match="not expected"):
        receiver.begin("job-1", [1, 2], "pre")
    receiver.expect("job-1", [1, 2])
    with pytest.raises(TransferRefused, match="differ"):
        receiver.begin("job-1", [2, 1], "pre")
    entry = receiver.begin("job-1", [1, 2], "pre")
    withdrawn = asyncio.create_task(receiver.withdraw("job-1"))
    await asyncio.sleep(0)
    assert not withdrawn.done()  # a write is in flight: the blocks are not free yet
    assert not receiver.still_wanted(entry)
    receiver.end(entry, ok=True)
    await asyncio.wait_for(withdrawn, 5)
    assert not receiver.landed("job-1")  # withdrawn before it landed: never counted
    with pytest.raises(TransferRefused):
        receiver.begin("job-1", [1, 2], "pre")  # a late transfer is refused


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_planes_move_blocks_byte_identical(transport: str) -> None:
    etcd = MemoryEtcd()
    src_pool, dst_pool = make_pool(64, seed=3), make_pool(48)
    sender, s_server, _ = await serve_plane("pre", "ns", transport, etcd, src_pool)
    receiver, r_server, r_endpoint = await serve_plane("dec", "ns", transport, etcd, dst_pool)
    try:
        src, dst = [3, 10, 11, 40, 63], [47, 0, 5, 6, 20]
        receiver.receiver.expect("job-7", dst)
        stats = await sender.send_blocks(PeerInfo("dec", r_endpoint), src, dst, transfer_id="job-7")
        assert stats.num_bytes == len(src) * src_pool.layout.bytes_per_block
        assert receiver.receiver.landed("job-7")
        assert block_digest(src_pool, src) == block_digest(dst_pool, dst)
        await receiver.receiver.withdraw("job-7")
        # The same job again: withdrawn, so refused, and nothing is written.
        before = block_digest(dst_pool, list(range(48)))
        with pytest.raises(TransferError, match="not expected"):
            await sender.send_blocks(PeerInfo("dec", r_endpoint), src, dst, transfer_id="job-7")
        assert block_digest(dst_pool, list(range(48))) == before
    finally:
        await sender.close()
        await receiver.close()
        await s_server.stop(None)
        await r_server.stop(None)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_mismatched_layout_refused_before_any_byte(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    etcd = MemoryEtcd()
    src_pool, dst_pool = make_pool(16, seed=4), make_pool(16, head_dim=16)
    sender, s_server, _ = await serve_plane("pre", "ns", transport, etcd, src_pool)
    receiver, r_server, r_endpoint = await serve_plane("dec", "ns", transport, etcd, dst_pool)
    try:
        receiver.receiver.expect("job-1", [1])
        with caplog.at_level(logging.WARNING), pytest.raises(TransferError, match="head_dim=8/16"):
            await sender.send_blocks(PeerInfo("dec", r_endpoint), [2], [1], transfer_id="job-1")
        assert any(
            "kv pairing refused instance_id=pre peer=dec" in r.getMessage() for r in caplog.records
        )
        assert not dst_pool.tensors[0].any()
    finally:
        await sender.close()
        await receiver.close()
        await s_server.stop(None)
        await r_server.stop(None)


async def test_transport_mismatch_refused() -> None:
    if not nixl_available():
        pytest.skip("NIXL cannot load here (nixl-cu12 not installed)")
    etcd = MemoryEtcd()
    sender, s_server, _ = await serve_plane("pre", "ns", "grpc", etcd, make_pool(8))
    receiver, r_server, r_endpoint = await serve_plane("dec", "ns", "nixl", etcd, make_pool(8))
    try:
        with pytest.raises(TransferError, match="--kv-transport nixl"):
            await sender.send_blocks(PeerInfo("dec", r_endpoint), [1], [1], transfer_id="j")
    finally:
        await sender.close()
        await receiver.close()
        await s_server.stop(None)
        await r_server.stop(None)


def test_chunk_codec_writes_what_protobuf_writes() -> None:
    data = bytes(range(256)) * 600  # long enough for a 3-byte length varint
    raw = data_prefix(300, len(data)) + data
    assert raw == kv_transfer_pb2.KvBlocksChunk(num_blocks=300, data=data).SerializeToString()
    chunk = parse_chunk(raw)
    assert chunk.header is None and chunk.num_blocks == 300 and chunk.data == data
    assert chunk.data.obj is raw  # a view of the received buffer, not a copy
    header = kv_transfer_pb2.KvTransferHeader(transfer_id="job-1", dst_block_ids=[4, 2])
    first = parse_chunk(encode_header(header))
    assert first.header == header and first.num_blocks == 0


def test_chunk_codec_parses_any_conforming_encoding() -> None:
    # data before num_blocks, and an unknown field 9: valid protobuf, not the fast path's shape.
    data = b"\x01\x02\x03"
    raw = b"\x1a\x03" + data + b"\x10\x05" + b"\x48\x07"
    chunk = parse_chunk(raw)
    assert chunk.num_blocks == 5 and chunk.data == data
    with pytest.raises(ValueError, match="not a KvBlocksChunk"):
        parse_chunk(b"\x10\x05\x1a\x09abc")  # data shorter than its length


def test_pool_read_prefix_and_runs_of_blocks() -> None:
    src, dst = make_pool(seed=4), make_pool()
    ids = [3, 4, 5, 9, 10, 1]  # runs copied as slices, singles too
    data = src.read(ids, prefix=b"hdr")
    assert data[:3] == b"hdr" and data[3:] == src.read(ids)
    dst.write([20, 21, 0, 7, 8, 30], memoryview(data)[3:])
    assert block_digest(src, ids) == block_digest(dst, [20, 21, 0, 7, 8, 30])
    assert not dst.tensors[0][22].any()


async def test_grpc_transfer_in_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    etcd = MemoryEtcd()
    src_pool, dst_pool = make_pool(64, seed=5), make_pool(48)
    # Two blocks a chunk: 7 blocks go as 4 chunks, each written while the next arrives.
    monkeypatch.setattr(grpc_transport, "CHUNK_BYTES", 2 * src_pool.layout.bytes_per_block)
    sender, s_server, _ = await serve_plane("pre", "ns", "grpc", etcd, src_pool)
    receiver, r_server, r_endpoint = await serve_plane("dec", "ns", "grpc", etcd, dst_pool)
    try:
        src, dst = [1, 2, 3, 30, 31, 50, 8], [10, 11, 12, 13, 40, 0, 47]
        receiver.receiver.expect("job-9", dst)
        stats = await sender.send_blocks(PeerInfo("dec", r_endpoint), src, dst, transfer_id="job-9")
        assert stats.num_bytes == len(src) * src_pool.layout.bytes_per_block
        assert receiver.receiver.landed("job-9")
        assert block_digest(src_pool, src) == block_digest(dst_pool, dst)
    finally:
        await sender.close()
        await receiver.close()
        await s_server.stop(None)
        await r_server.stop(None)


async def test_push_blocks_accepts_protobuf_encoded_chunks() -> None:
    # What another language's encoder may write: the same fields in another order.
    etcd = MemoryEtcd()
    dst_pool = make_pool(16)
    receiver, r_server, r_endpoint = await serve_plane("dec", "ns", "grpc", etcd, dst_pool)
    src_pool = make_pool(16, seed=6)
    try:
        receiver.receiver.expect("job-x", [2, 3])
        header = kv_transfer_pb2.KvTransferHeader(
            transfer_id="job-x",
            sender_instance_id="other",
            layout=layout_msg(dst_pool.layout),
            dst_block_ids=[2, 3],
        )
        data = src_pool.read([5, 6])
        reordered = b"\x1a" + _varint(len(data)) + data + b"\x10\x02"  # data, then num_blocks
        channel = grpc.aio.insecure_channel(r_endpoint)
        push = channel.stream_stream(
            grpc_transport.PUSH_BLOCKS,
            request_serializer=None,
            response_deserializer=kv_transfer_pb2.KvTransferAck.FromString,
        )
        call = push()
        await call.write(kv_transfer_pb2.KvBlocksChunk(header=header).SerializeToString())
        assert (await call.read()).accepted
        await call.write(reordered)
        await call.done_writing()
        ack = await call.read()
        assert ack.bytes == 2 * dst_pool.layout.bytes_per_block
        assert block_digest(src_pool, [5, 6]) == block_digest(dst_pool, [2, 3])
        await channel.close()
    finally:
        await receiver.close()
        await r_server.stop(None)
