"""A service process's operations tooling, set up from its settings before the server starts: logging,
and whatever else the settings turn on (metrics, tracing), registered with `cir_common.telemetry`."""

from __future__ import annotations

from cir_common.config import ServiceSettings
from cir_common.request_context import configure_logging


def install(settings: ServiceSettings, display_name: str) -> None:
    configure_logging(display_name, settings.log_level)
