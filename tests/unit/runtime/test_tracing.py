"""Trace export settings: `--otel-exporter`, then TANDEM_OTEL_EXPORTER, then OTEL_TRACES_EXPORTER."""

from __future__ import annotations

import pytest
from tandem.runtime.config import RuntimeConfig, parse_config
from tandem.runtime.startup import StartupError
from tandem.runtime.tracing import Tracing, otlp_protocol


def exporter(argv: list[str], environ: dict[str, str]) -> str:
    return parse_config(RuntimeConfig, argv, environ=environ).otel_exporter


def test_the_standard_variable_selects_the_exporter_unless_ours_or_a_flag_does() -> None:
    assert exporter([], {}) == "none"
    assert exporter([], {"OTEL_TRACES_EXPORTER": "otlp"}) == "otlp"
    both = {"OTEL_TRACES_EXPORTER": "otlp", "TANDEM_OTEL_EXPORTER": "console"}
    assert exporter([], both) == "console"
    assert exporter(["--otel-exporter", "none"], both) == "none"


def test_an_exporter_we_do_not_have_is_refused_naming_the_variable() -> None:
    with pytest.raises(SystemExit, match="invalid OTEL_TRACES_EXPORTER: 'zipkin' is not one of"):
        exporter([], {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_otlp_protocol_is_grpc_unless_the_standard_variables_say_otherwise() -> None:
    assert otlp_protocol({}) == "grpc"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) == "http/protobuf"
    traces_first = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
    }
    assert otlp_protocol(traces_first) == "grpc"
    with pytest.raises(StartupError, match="http/json"):
        otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_no_exporter_means_no_tracer_and_a_console_one_makes_spans() -> None:
    assert Tracing.start("tandem-test", "none").tracer is None
    tracing = Tracing.start("tandem-test", "console")
    try:
        assert tracing.tracer is not None
        with tracing.tracer.start_as_current_span("op") as span:
            assert span.get_span_context().is_valid
    finally:
        tracing.shutdown()


def test_otel_service_name_names_the_resource_else_the_services_own_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def service_name() -> object:
        tracing = Tracing.start("tandem-frontend", "console")
        try:
            assert tracing.tracer is not None
            with tracing.tracer.start_as_current_span("op") as span:
                return span.resource.attributes["service.name"]  # type: ignore[attr-defined]
        finally:
            tracing.shutdown()

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    assert service_name() == "tandem-frontend"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-frontend")
    assert service_name() == "edge-frontend"
