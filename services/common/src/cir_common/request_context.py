"""Per-RPC context (request id, extra response metadata) and logging that carries it."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import uuid
from datetime import UTC, datetime
from typing import TextIO

from opentelemetry import trace

from cir_common.telemetry import TELEMETRY
from cir_common.vocabulary import LogFormat

REQUEST_ID_HEADER = "x-request-id"
# Trailers of a RESOURCE_EXHAUSTED that may pass on retry: when to retry, in milliseconds.
RETRY_AFTER_HEADER = "x-cir-retry-after-ms"
RETRY_PUSHBACK_HEADER = "grpc-retry-pushback-ms"

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("cir_request_id", default="-")


def current_request_id() -> str:
    return _request_id.get()


def bind_request_id(request_id: str | None) -> contextvars.Token[str]:
    """Makes `request_id` (or a fresh one) the id of the running RPC and of calls it makes."""
    return _request_id.set(request_id or uuid.uuid4().hex[:16])


def reset_request_id(token: contextvars.Token[str]) -> None:
    _request_id.reset(token)


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for downstream calls, so one request id (and, when tracing, one trace) follows a query
    through every service."""
    rid = _request_id.get()
    own = () if rid == "-" else ((REQUEST_ID_HEADER, rid),)
    return (*own, *TELEMETRY.outgoing_headers())


class _RequestIdFilter(logging.Filter):
    """Adds the service, the request id and the current span's trace and span ids (None outside one)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        record.service = self._service
        span = trace.get_current_span().get_span_context()
        record.trace_id = f"{span.trace_id:032x}" if span.is_valid else None
        record.span_id = f"{span.span_id:016x}" if span.is_valid else None
        return True


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, service, request_id, trace_id, span_id (null
    when unknown), logger, message, and exception (the traceback) when the record has one."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", "-")
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": getattr(record, "service", None),
            "request_id": None if request_id == "-" else request_id,
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(
    service: str,
    level: str = "INFO",
    stream: TextIO | None = None,
    log_format: LogFormat = LogFormat.TEXT,
) -> None:
    """One line per record, each with the service name and the request id (`-` outside an RPC).

    `LogFormat.JSON`: each line a JSON object (`JsonLogFormatter`), with the trace id too.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RequestIdFilter(service))
    if log_format == LogFormat.JSON:
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(service)s [%(request_id)s] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
