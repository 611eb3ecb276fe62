"""`python -m cir_retriever`: run the retriever service."""

from __future__ import annotations

import sys

from cir.retriever.v1 import retriever_pb2_grpc
from cir_common.server import ServiceHost
from cir_common.service_kit import run_service
from cir_retriever.service import RetrieverServicer
from cir_retriever.settings import RetrieverSettings, load_retriever_settings

SERVICE_NAME = "cir.retriever.v1.RetrieverService"


def _build(settings: RetrieverSettings, host: ServiceHost) -> RetrieverServicer:
    servicer = RetrieverServicer(settings)
    retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(servicer, host.server)
    return servicer


def main() -> int:
    return run_service(
        display_name="retriever",
        service_name=SERVICE_NAME,
        settings_loader=load_retriever_settings,
        build=_build,
    )


if __name__ == "__main__":
    sys.exit(main())
