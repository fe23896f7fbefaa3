from __future__ import annotations

from tandem.router.approx_index import ApproxIndex
from tandem.router.radix_index import RadixIndex


def test_inserted_blocks_expire_unless_refreshed():
    now = [0.0]
    approx = ApproxIndex(RadixIndex(), ttl=10, clock=lambda: now[0])
    approx.insert("w1", [1, 2, 3])
    now[0] = 5
    approx.insert("w1", [1, 2])  # refreshed
    approx.insert("w2", [1])
    assert approx.index.overlaps([1, 2, 3]) == {"w1": 3, "w2": 1}
    now[0] = 11
    assert approx.expire() == 1  # only block 3 was not refreshed
    assert approx.index.overlaps([1, 2, 3]) == {"w1": 2, "w2": 1}
    now[0] = 16
    approx.expire()
    assert approx.index.num_blocks == 0
    assert len(approx) == 0


def test_worker_removal():
    approx = ApproxIndex(RadixIndex(), ttl=10)
    approx.insert("w1", [1, 2])
    approx.remove_worker("w1")
    assert approx.index.num_blocks == 0
    approx.expire()
