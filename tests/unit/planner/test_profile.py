"""The worker profile: its file, its interpolated surfaces, what one worker sustains within targets."""

from __future__ import annotations

from pathlib import Path

import pytest
from profile_fakes import itl_ms, synthetic_profile, ttft_ms
from tandem.planner.profile import WorkerProfile


def test_measured_points_come_back_and_between_them_it_is_linear() -> None:
    p = synthetic_profile()
    assert p.ttft_ms(512, 4) == pytest.approx(ttft_ms(512, 4))
    assert p.itl_ms(32, 2048) == pytest.approx(itl_ms(32, 2048))
    # Both surfaces are linear in each axis, so interpolation is exact between points.
    assert p.itl_ms(80, 5000) == pytest.approx(itl_ms(80, 5000))
    assert p.ttft_ms(1000, 3) == pytest.approx(ttft_ms(1000, 3), rel=0.2)
    # Beyond the largest batch: extrapolated from the last two points, not held.
    assert p.itl_ms(200, 512) == pytest.approx(itl_ms(200, 512))
    assert p.itl_ms(0.5, 512) == pytest.approx(itl_ms(1, 512))  # below the first: held


def test_capacity_within_targets() -> None:
    p = synthetic_profile()
    # ITL 30 ms at context 1000: 10 + 0.2 b + 1 = 30 -> b = 95 -> 95 tokens per 30 ms.
    assert p.decode_capacity(1000, 30) == pytest.approx(95 / 30 * 1000, rel=0.02)
    # A tighter target allows a smaller batch: less throughput.
    assert p.decode_capacity(1000, 15) < p.decode_capacity(1000, 30)
    # Prefill runs at 10k tokens/s whatever the load within the target...
    assert p.prefill_capacity(512, 500) == pytest.approx(10_000)
    # ...and a target even one prompt misses gets the one-prompt figure (best effort).
    assert p.prefill_capacity(8192, 1) == pytest.approx(10_000)
    assert p.batch_at(p.decode_capacity(1000, 30), 1000) == pytest.approx(95, rel=0.02)


def test_the_file_round_trips_and_bad_files_say_why(tmp_path: Path) -> None:
    p = synthetic_profile()
    path = tmp_path / "profile.json"
    p.save(path)
    assert WorkerProfile.load(path) == p
    with pytest.raises(ValueError, match="cannot read profile"):
        WorkerProfile.load(tmp_path / "missing.json")
    path.write_text('{"version": 7}')
    with pytest.raises(ValueError, match="profile version 7"):
        WorkerProfile.load(path)
    path.write_text('{"version": 1, "engine": "mocker", "model": "m", "prefill": []}')
    with pytest.raises(ValueError, match="not a worker profile"):
        WorkerProfile.load(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a worker profile"):
        WorkerProfile.load(path)
