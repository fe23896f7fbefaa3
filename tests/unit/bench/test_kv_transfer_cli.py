"""bench/kv_transfer.py's plan, process pairs and CPU accounting, without etcd or a transfer."""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import kv_transfer  # noqa: E402 - bench/ is not a package


def test_each_transport_gets_its_own_processes_unless_shared() -> None:
    assert kv_transfer.process_pairs(["nixl", "grpc"], shared=False) == [["nixl"], ["grpc"]]
    assert kv_transfer.process_pairs(["nixl", "grpc"], shared=True) == [["nixl", "grpc"]]
    assert kv_transfer.process_pairs(["grpc"], shared=False) == [["grpc"]]


def test_plan_names_every_transfer_once_per_round_and_transport() -> None:
    transfers = kv_transfer.plan([1, 16], rounds=2, dtype="float32")
    ids = [tid for tid, _ in transfers]
    assert len(ids) == len(set(ids))
    blocks = dict(transfers)
    assert blocks["16-1-grpc"] == blocks["16-0-nixl"] == round(16 * 2**20 / 737280)
    assert blocks["1-0-grpc"] == 1  # at least one block
    measured = [tid for tid in ids if not tid.startswith("warm")]
    assert len(measured) == 2 * 2 * 2


def test_receiver_answers_cpu_time_until_done() -> None:
    here, there = mp.Pipe()
    answering = threading.Thread(target=kv_transfer._answer_cpu, args=(there,))
    answering.start()
    here.send("cpu")
    first = here.recv()
    sum(i * i for i in range(200_000))  # some CPU time in this process
    here.send("cpu")
    second = here.recv()
    here.send("done")
    answering.join(10)
    assert not answering.is_alive()
    assert 0 < first < second
