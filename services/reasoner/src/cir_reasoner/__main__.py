"""`python -m cir_reasoner`: run the reasoner service.

The vLLM backend starts its engine core in spawned processes, which re-import the main module:
everything runs under the `__main__` guard below.
"""

from __future__ import annotations

import sys

from cir.reasoner.v1 import reasoner_pb2_grpc
from cir_common.server import ServiceHost
from cir_common.service_kit import run_service
from cir_common.vocabulary import REASONER
from cir_reasoner.service import ReasonerServicer
from cir_reasoner.settings import ReasonerSettings, load_reasoner_settings

SERVICE_NAME = REASONER.grpc_name


def _build(settings: ReasonerSettings, host: ServiceHost) -> ReasonerServicer:
    servicer = ReasonerServicer(settings)
    reasoner_pb2_grpc.add_ReasonerServiceServicer_to_server(servicer, host.server)
    return servicer


def main() -> int:
    return run_service(
        display_name=REASONER.service.value,
        service_name=SERVICE_NAME,
        settings_loader=load_reasoner_settings,
        build=_build,
    )


if __name__ == "__main__":
    sys.exit(main())
