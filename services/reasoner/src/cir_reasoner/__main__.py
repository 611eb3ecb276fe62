"""`python -m cir_reasoner`: run the reasoner service.

The vLLM backend starts its engine core in spawned processes, which re-import the main module:
everything runs under the `__main__` guard below.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable

from cir.reasoner.v1 import reasoner_pb2_grpc
from cir_common.server import ServiceHost
from cir_common.service_kit import run_service
from cir_reasoner.service import ReasonerServicer
from cir_reasoner.settings import ReasonerSettings, load_reasoner_settings

SERVICE_NAME = "cir.reasoner.v1.ReasonerService"

log = logging.getLogger(__name__)


def main() -> int:
    servicers: list[ReasonerServicer] = []

    def build(settings: ReasonerSettings, host: ServiceHost) -> Callable[[], Awaitable[None]]:
        servicer = ReasonerServicer(settings)
        servicers.append(servicer)
        reasoner_pb2_grpc.add_ReasonerServiceServicer_to_server(servicer, host.server)
        return servicer.load

    try:
        return run_service(
            display_name="reasoner",
            service_name=SERVICE_NAME,
            settings_loader=load_reasoner_settings,
            build=build,
        )
    finally:
        # run_service has no shutdown hook: release the backend (vLLM engine processes, HTTP pool) here,
        # after the server drained its in-flight calls.
        for servicer in servicers:
            try:
                asyncio.run(servicer.close())
            except RuntimeError as error:  # an HTTP pool bound to the server's loop, closed by now
                log.debug("closing the backend: %s", error)


if __name__ == "__main__":
    sys.exit(main())
