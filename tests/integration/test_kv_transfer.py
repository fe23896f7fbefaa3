"""KV transfer between two real processes, each with its own pool, gRPC server and etcd lease.

Both transports pass the same tests: blocks land byte-identical, a peer of
another layout is refused with the log line, and a peer killed mid-transfer
gives the sender a clean error (no hang).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tandem.launcher.local_infra import LocalInfra

from tests.support.kv_peer import PREFIX
from tests.support.kv_transfer import TRANSPORTS
from tests.support.processes import ServiceProcess, infra_flags


class KvPeer:
    """A `tests.support.kv_peer` child: JSON commands in, JSON answers out, stderr to a log."""

    def __init__(
        self, infra: LocalInfra, namespace: str, log_dir: Path, instance_id: str, *extra: str
    ) -> None:
        self.instance_id = instance_id
        self.log_path = log_dir / f"kv_peer-{instance_id}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        args = [
            "--etcd",
            infra.etcd_url,
            "--namespace",
            namespace,
            "--instance-id",
            instance_id,
            *extra,
        ]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.kv_peer", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self._lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.endpoint = self.next_line(60)["endpoint"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if line.startswith(PREFIX):
                self._lines.put(json.loads(line[len(PREFIX) :]))

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def next_line(self, timeout: float = 30) -> dict[str, Any]:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"{self.instance_id}: no answer in {timeout}s:\n{self.log_text()[-3000:]}"
            ) from None

    def send_command(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def call(self, timeout: float = 30, **cmd: Any) -> dict[str, Any]:
        self.send_command(**cmd)
        return self.next_line(timeout)

    def send(
        self, to: KvPeer, tid: str, src: list[int], dst: list[int], timeout: float = 60
    ) -> dict[str, Any]:
        self.send_command(
            op="send", id=tid, peer=to.instance_id, endpoint=to.endpoint, src=src, dst=dst
        )
        assert self.next_line(timeout) == {"event": "sending"}
        return self.next_line(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()


@pytest.fixture
def peers(infra: LocalInfra, namespace: str, log_dir: Path) -> Iterator[Any]:
    started: list[KvPeer] = []

    def start(instance_id: str, *extra: str) -> KvPeer:
        peer = KvPeer(infra, namespace, log_dir, instance_id, *extra)
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blocks_land_byte_identical(peers: Any, transport: str) -> None:
    prefill = peers("prefill-1", "--transport", transport, "--num-blocks", "256", "--seed", "7")
    decode = peers("decode-1", "--transport", transport, "--num-blocks", "128")
    src, dst = [5, 17, 200, 201, 202, 99], [127, 0, 1, 2, 64, 3]
    assert decode.call(op="expect", id="job-a", dst=dst) == {"ok": True}
    result = prefill.send(decode, "job-a", src, dst)
    assert result["ok"], result
    assert (
        result["bytes"] == len(src) * 3 * 4 * 2 * 2 * 8 * 4
    )  # layers x block x K,V x heads x dim x f32
    assert decode.call(op="landed", id="job-a")["landed"]
    want = prefill.call(op="digest", blocks=src)["digest"]
    assert decode.call(op="digest", blocks=dst)["digest"] == want
    # Untouched blocks stayed zero: the digest of a zero block differs from a random one.
    assert (
        decode.call(op="digest", blocks=[4])["digest"]
        != prefill.call(op="digest", blocks=[4])["digest"]
    )
    # A transfer the decode side never expected is refused, and writes nothing.
    before = decode.call(op="digest", blocks=list(range(128)))["digest"]
    refused = prefill.send(decode, "job-b", [6], [4])
    assert not refused["ok"] and "not expected" in refused["error"]
    assert decode.call(op="digest", blocks=list(range(128)))["digest"] == before


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mismatched_layout_refused_with_log_line(peers: Any, transport: str) -> None:
    prefill = peers("prefill-2", "--transport", transport, "--seed", "1")
    decode = peers("decode-2", "--transport", transport, "--head-dim", "16")
    decode.call(op="expect", id="job-c", dst=[1, 2])
    before = decode.call(op="digest", blocks=[1, 2])["digest"]
    result = prefill.send(decode, "job-c", [3, 4], [1, 2])
    assert not result["ok"] and "head_dim=8/16" in result["error"]
    assert (
        "kv pairing refused instance_id=prefill-2 peer=decode-2 reason='head_dim=8/16'"
        in prefill.log_text()
    )
    assert decode.call(op="digest", blocks=[1, 2])["digest"] == before
    assert not decode.call(op="landed", id="job-c")["landed"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_peer_killed_mid_transfer_gives_clean_error(peers: Any, transport: str) -> None:
    # 64 MiB of blocks: far more than gRPC's flow-control windows hold, so a stopped
    # receiver stalls the stream and the kill lands while the transfer is under way.
    big = ["--num-blocks", "2048", "--head-dim", "256"]
    prefill = peers("prefill-3", "--transport", transport, "--seed", "2", "--timeout", "120", *big)
    decode = peers("decode-3", "--transport", transport, *big)
    blocks = list(range(2048))
    decode.call(op="expect", id="job-d", dst=blocks)
    decode.proc.send_signal(signal.SIGSTOP)
    try:
        prefill.send_command(
            op="send", id="job-d", peer="decode-3", endpoint=decode.endpoint, src=blocks, dst=blocks
        )
        assert prefill.next_line(30) == {"event": "sending"}
    finally:
        decode.proc.send_signal(signal.SIGKILL)
        decode.proc.send_signal(signal.SIGCONT)
    started = time.monotonic()
    result = prefill.next_line(60)  # far below the 120 s transfer timeout: the kill is noticed
    assert not result["ok"], result
    assert time.monotonic() - started < 60
    assert "kv transfer failed transfer_id=job-d peer=decode-3" in prefill.log_text()
    assert prefill.proc.poll() is None  # the sender lives on


def test_nixl_transport_without_nixl_exits_with_one_line(
    infra: LocalInfra, namespace: str, log_dir: Path, tmp_path: Path
) -> None:
    # Modules that fail to import stand in front of the installed wheel: NIXL "cannot load".
    for name in ("nixl_cu12", "nixl_cu13", "nixl"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('not on this machine')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    args = ["--engine", "torch", *infra_flags(infra, namespace), "--host", "127.0.0.1",
            "--port", "0", "--metrics-port", "0", "--disaggregation-mode", "decode",
            "--kv-transport", "nixl"]  # fmt: skip
    proc = ServiceProcess("tandem.worker", args, log_dir, env=env)
    try:
        proc.proc.wait(120)
        assert proc.proc.returncode == 78, proc.log_text()
        lines = [line for line in proc.log_text().splitlines() if "cannot start" in line]
        assert len(lines) == 1, proc.log_text()
        assert "--kv-transport nixl: NIXL cannot load here" in lines[0]
        assert "--kv-transport grpc" in lines[0]
    finally:
        proc.stop()
