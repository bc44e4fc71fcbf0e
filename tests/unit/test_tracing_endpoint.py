"""Which environment variable switches tracing on, and the traces URL it gives."""

from __future__ import annotations

import logging
import sys

import pytest

from executor.tracing import include_commands, start_tracing, traces_endpoint


def test_no_variable_means_tracing_is_off() -> None:
    assert traces_endpoint({}) is None
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) is None


def test_base_endpoint_gets_the_traces_path() -> None:
    assert (traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
            == "http://c:4318/v1/traces")


def test_kaniko_variable_is_a_base_endpoint_too() -> None:
    assert (traces_endpoint({"KANIKO_TELEMETRY_ENDPOINT": "http://c:4318"})
            == "http://c:4318/v1/traces")
    assert (traces_endpoint({"KANIKO_TELEMETRY_ENDPOINT": "http://c:4318/v1/traces"})
            == "http://c:4318/v1/traces")


def test_traces_endpoint_is_used_as_is_and_wins() -> None:
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x",
                            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://t/x"


def test_standard_variable_wins_over_kaniko_one() -> None:
    assert (traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a",
                             "KANIKO_TELEMETRY_ENDPOINT": "http://b"}) == "http://a/v1/traces")


def test_commands_only_when_asked() -> None:
    assert not include_commands({})
    assert not include_commands({"KILN_TELEMETRY_INCLUDE_COMMANDS": "0"})
    assert include_commands({"KILN_TELEMETRY_INCLUDE_COMMANDS": "1"})


def test_missing_sdk_is_a_warning_and_no_trace(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                        None)
    with caplog.at_level(logging.WARNING, logger="kiln"):
        assert start_tracing() is None
    assert "install kiln[otel]" in caplog.text
