"""`tandem up` builds each child's typed config and passes it on as the flags that parse back to it."""

from __future__ import annotations

import os
from typing import Any

import pytest
from tandem.frontend.config import FrontendConfig
from tandem.launcher.up import UpConfig, worker_argv
from tandem.planner.config import PlannerConfig
from tandem.runtime.config import config_to_argv, parse_config
from tandem.worker.__main__ import parse_args
from tandem.worker.config import WorkerConfig


@pytest.fixture(autouse=True)
def _no_tandem_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # parse_config falls back to TANDEM_* for fields no flag sets.
    for name in list(os.environ):
        if name.startswith("TANDEM_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    "config",
    [
        FrontendConfig(
            nats="nats://n:1",
            etcd="http://e:2",
            namespace="ns",
            http_port=8123,
            router_mode="round-robin",
            kv_events=False,
            router_temperature=0.25,
            max_migrations=0,
        ),
        PlannerConfig(
            model="m",
            min_workers=2,
            max_workers=5,
            adjustment_interval=0.3,
            scale_up_kv_usage=0.7,
            scale_down_kv_usage=0.1,
            log_level="DEBUG",
        ),
        WorkerConfig(
            engine="mocker",
            instance_id="w-1",
            port=1234,
            load_report_interval=0.5,
            shutdown_grace_seconds=2.0,
            otel_exporter="console",
        ),
        UpConfig(
            engine="mocker",
            workers=3,
            planner=True,
            max_workers=6,
            http_port=0,
            planner_adjustment_interval=1.5,
            nats="nats://n:1",
            ready_timeout=30.0,
        ),
    ],
    ids=lambda config: type(config).__name__,
)
def test_config_to_argv_parses_back_to_the_config(config: Any) -> None:
    assert parse_config(type(config), config_to_argv(config)) == config


def test_children_get_the_cluster_servers_and_the_up_flags() -> None:
    up = UpConfig(engine="mocker", http_port=9000, router_mode="random", namespace="ns",
                  planner=True, workers=1, max_workers=3)  # fmt: skip
    runtime = up.runtime(nats="nats://127.0.0.1:1", etcd="http://127.0.0.1:2")

    frontend = parse_config(FrontendConfig, config_to_argv(up.frontend_config(runtime)))
    assert (frontend.nats, frontend.etcd, frontend.namespace) == (runtime.nats, runtime.etcd, "ns")
    assert (frontend.http_port, frontend.router_mode) == (9000, "random")

    planner = parse_config(PlannerConfig, config_to_argv(up.planner_config("m", runtime)))
    assert (planner.model, planner.max_workers, planner.etcd) == ("m", 3, runtime.etcd)


def test_workers_get_their_config_then_the_flags_up_passes_on_and_their_own_ids() -> None:
    up = UpConfig(engine="mocker", log_level="DEBUG")
    argv = worker_argv(up.worker_config(up.runtime(nats="nats://h:1", etcd="http://h:2")),
                       ["--num-kv-blocks", "64", "--port", "0"])  # fmt: skip
    assert "--instance-id" not in argv
    assert argv[-4:] == ["--num-kv-blocks", "64", "--port", "0"]
    first, engine = parse_args(argv)
    second, _ = parse_args(argv)
    assert (first.engine, first.nats, first.log_level) == ("mocker", "nats://h:1", "DEBUG")
    assert engine.num_kv_blocks == 64
    assert first.instance_id != second.instance_id


def test_the_kv_block_size_goes_to_the_workers_only() -> None:
    from tandem.runtime.config import parse_known_config

    up, passed_on = parse_known_config(
        UpConfig, ["--engine", "mocker", "--kv-cache-block-size", "64"], prog="tandem up"
    )
    assert passed_on == ["--kv-cache-block-size", "64"]
    _, engine = parse_args(worker_argv(up.worker_config(up.runtime()), passed_on))
    assert engine.scheduler.kv_cache_block_size == 64
    # The frontend's router takes it from the workers: no flag of its own to disagree.
    assert "kv_cache_block_size" not in FrontendConfig.__dataclass_fields__


def test_a_bad_frontend_value_fails_in_up_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    from tandem.launcher.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["up", "--http-port", "70000"])
    assert exited.value.code == 2
    assert "frontend: http_port must be in [0, 65535]" in capsys.readouterr().err


def test_children_keep_their_environment_and_up_flags_still_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Children inherit the environment: what it sets for them must reach them,
    # and a flag given to `tandem up` must beat it there too.
    for name, value in {"TANDEM_OTEL_EXPORTER": "console", "TANDEM_MAX_MIGRATIONS": "7",
                        "TANDEM_LOAD_REPORT_INTERVAL": "5", "TANDEM_LOG_LEVEL": "DEBUG"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    up = UpConfig(engine="mocker", log_level="INFO")
    runtime = up.runtime(nats="nats://h:1", etcd="http://h:2")

    frontend_argv = config_to_argv(up.frontend_config(runtime))
    assert "--otel-exporter" not in frontend_argv and "--max-migrations" not in frontend_argv
    frontend = parse_config(FrontendConfig, frontend_argv)
    assert (frontend.otel_exporter, frontend.max_migrations) == ("console", 7)
    assert frontend.log_level == "INFO"

    worker, _ = parse_args(worker_argv(up.worker_config(runtime), []))
    assert (worker.load_report_interval, worker.log_level) == (5.0, "INFO")


def test_the_frontend_gets_its_api_keys_in_its_environment_never_on_its_command_line() -> None:
    from tandem.launcher.up import frontend_spec

    up = parse_config(UpConfig, ["--api-key", "sk-one,sk-two", "--api-key", "sk-three"])
    spec = frontend_spec(up.frontend_config(up.runtime(nats="nats://h:1", etcd="http://h:2")))
    assert not any("sk-" in arg for arg in spec.argv)
    assert spec.env == {"TANDEM_API_KEY": "sk-one,sk-two,sk-three"}
    frontend = parse_config(FrontendConfig, spec.argv[3:], environ=spec.env)
    assert frontend.api_key == ["sk-one", "sk-two", "sk-three"]
    assert "sk-one" not in repr(up) + repr(frontend)
