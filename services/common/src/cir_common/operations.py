"""A service process's operations tooling, set up from its settings before the server starts: logging,
and whatever else the settings turn on (metrics, tracing), registered with `cir_common.telemetry`."""

from __future__ import annotations

from cir_common import metrics
from cir_common.config import ServiceSettings
from cir_common.request_context import configure_logging
from cir_common.tracing import install_tracing


def install(settings: ServiceSettings, display_name: str) -> None:
    configure_logging(display_name, settings.log_level, log_format=settings.log_format)
    install_tracing(display_name)  # only when the OTEL_* variables say where to send spans
    metrics.install(settings, display_name)  # only when metrics_port is set
