from __future__ import annotations

import subprocess
import sys

import pytest
from tandem.worker.__main__ import parse_args
from tandem.worker.mocker import MockerConfig


def test_worker_and_engine_flags_then_env_then_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_SPEEDUP_RATIO", "50")
    monkeypatch.setenv("TANDEM_NUM_KV_BLOCKS", "7")
    worker, engine = parse_args(
        ["--engine", "mocker", "--port", "1234", "--num-kv-blocks", "99", "--instance-id", "w1"]
    )
    assert (worker.engine, worker.port, worker.instance_id) == ("mocker", 1234, "w1")
    assert worker.disaggregation_mode == "aggregated" and worker.endpoint_host == "127.0.0.1"
    assert isinstance(engine, MockerConfig)
    assert (engine.num_kv_blocks, engine.speedup_ratio) == (99, 50.0)
    assert engine.scheduler.kv_cache_block_size == 16


def test_engine_from_env_and_random_instance_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_ENGINE", "mocker")
    a, engine = parse_args([])
    b, _ = parse_args([])
    assert isinstance(engine, MockerConfig)
    assert a.instance_id and a.instance_id != b.instance_id


def test_invalid_values_exit_with_usage() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--engine", "mocker", "--speedup-ratio", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--engine", "nope"])


def test_help_lists_engine_flags_and_mocker_never_imports_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from tandem.worker.__main__ import parse_args\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    parse_args(['--engine', 'mocker', '--help'])\n"
        "parse_args(['--engine', 'mocker'])\n"
        "print(out.getvalue())\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    for flag in ("--speedup-ratio", "--num-kv-blocks", "--disaggregation-mode", "--metrics-port"):
        assert flag in result.stdout
    assert "NO_TORCH" in result.stdout


def test_scheduler_flags_are_flat_and_each_engine_keeps_its_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    from tandem.runtime.config import add_arguments
    from tandem.worker.torch_engine import TorchEngineConfig

    monkeypatch.setenv("TANDEM_MAX_NUM_BATCHED_TOKENS", "512")
    _, engine = parse_args(["--engine", "mocker", "--max-num-seqs", "5", "--watermark", "0"])
    assert isinstance(engine, MockerConfig)
    assert (engine.scheduler.max_num_seqs, engine.scheduler.max_num_batched_tokens) == (5, 512)
    assert engine.scheduler.watermark == 0.0 and engine.scheduler.kv_cache_block_size == 16

    mocker, torch = MockerConfig().scheduler, TorchEngineConfig().scheduler
    assert (mocker.max_num_seqs, mocker.max_num_batched_tokens, mocker.watermark) == (
        256,
        8192,
        0.01,
    )
    assert (torch.max_num_seqs, torch.max_num_batched_tokens, torch.watermark) == (64, 2048, 0.01)
    for cls, seqs in ((MockerConfig, 256), (TorchEngineConfig, 64)):
        parser = argparse.ArgumentParser()
        add_arguments(parser, cls)
        text = " ".join(parser.format_help().split())
        assert f"[env TANDEM_MAX_NUM_SEQS; default: {seqs}]" in text
        for flag in ("--kv-cache-block-size", "--max-num-batched-tokens", "--watermark"):
            assert flag in text
        assert "--enable-prefix-caching, --no-enable-prefix-caching" in text
