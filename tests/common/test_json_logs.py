"""JSON logs (CIR_<SERVICE>_LOG_FORMAT=json): one object per line, with the request id and the trace id."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cir_common import operations, tracing
from cir_common.config import ServiceSettings
from cir_common.request_context import bind_request_id, configure_logging, reset_request_id
from cir_common.vocabulary import LogFormat

log = logging.getLogger("tests.json_logs")
KEYS = {"time", "level", "service", "request_id", "trace_id", "span_id", "logger", "message"}


@pytest.fixture(autouse=True)
def restore_root_logger():
    """configure_logging replaces the root logger's handlers: put pytest's back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_object_per_line_outside_a_request():
    stream = io.StringIO()
    configure_logging("encoder", "INFO", stream=stream, log_format=LogFormat.JSON)
    log.info("two\nlines, %s", "ünïcode")
    log.debug("below the level")
    (entry,) = _lines(stream)
    assert set(entry) == KEYS
    assert entry["message"] == "two\nlines, ünïcode"
    assert entry["level"] == "INFO" and entry["service"] == "encoder" and entry["logger"] == "tests.json_logs"
    assert entry["request_id"] is None and entry["trace_id"] is None and entry["span_id"] is None
    assert datetime.fromisoformat(str(entry["time"])).utcoffset().total_seconds() == 0


def test_inside_a_traced_request_the_line_has_its_request_id_and_trace_id():
    stream = io.StringIO()
    configure_logging("retriever", "INFO", stream=stream, log_format=LogFormat.JSON)
    started = tracing.start_tracing("retriever", [SimpleSpanProcessor(InMemorySpanExporter())])
    token = bind_request_id("req-json-1")
    try:
        with tracing.span("a stage") as span:
            log.warning("degraded")
        ids = span.get_span_context()
    finally:
        reset_request_id(token)
        started.stop()
    (entry,) = _lines(stream)
    assert entry["request_id"] == "req-json-1"
    assert entry["trace_id"] == f"{ids.trace_id:032x}" and entry["span_id"] == f"{ids.span_id:016x}"
    assert entry["level"] == "WARNING"


def test_a_request_id_without_tracing_is_still_there():
    stream = io.StringIO()
    configure_logging("reasoner", "INFO", stream=stream, log_format=LogFormat.JSON)
    token = bind_request_id("req-json-2")
    try:
        log.info("in a request")
    finally:
        reset_request_id(token)
    (entry,) = _lines(stream)
    assert entry["request_id"] == "req-json-2" and entry["trace_id"] is None


def test_an_exception_is_one_line_with_its_traceback():
    stream = io.StringIO()
    configure_logging("captioner", "INFO", stream=stream, log_format=LogFormat.JSON)
    try:
        raise ValueError("bad input")
    except ValueError:
        log.exception("failed")
    (entry,) = _lines(stream)
    assert entry["message"] == "failed"
    assert "Traceback" in entry["exception"] and "ValueError: bad input" in entry["exception"]


def test_text_stays_the_default():
    stream = io.StringIO()
    configure_logging("encoder", "INFO", stream=stream)
    token = bind_request_id("req-text")
    try:
        log.info("hello")
    finally:
        reset_request_id(token)
    line = stream.getvalue()
    assert " INFO encoder [req-text] tests.json_logs: hello" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_the_setting_chooses_the_format(monkeypatch, capsys):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    operations.install(ServiceSettings(log_format=LogFormat.JSON), "encoder")
    log.info("configured")
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["message"] == "configured" and entry["service"] == "encoder"
