"""Per-RPC context (request id, extra response metadata) and logging that carries it."""

from __future__ import annotations

import contextvars
import logging
import sys
import uuid
from typing import TextIO

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
    """Metadata for downstream calls, so one request id follows a query through every service."""
    rid = _request_id.get()
    return () if rid == "-" else ((REQUEST_ID_HEADER, rid),)


class _RequestIdFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        record.service = self._service
        return True


def configure_logging(service: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """One line per record, each with the service name and the request id (`-` outside an RPC)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RequestIdFilter(service))
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(service)s [%(request_id)s] %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
