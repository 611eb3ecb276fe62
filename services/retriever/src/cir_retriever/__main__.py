"""`python -m cir_retriever`: run the retriever service."""

from __future__ import annotations

import sys

from cir.retriever.v1 import retriever_pb2_grpc
from cir_common.server import ServiceHost
from cir_common.service_kit import run_service
from cir_common.vocabulary import RETRIEVER
from cir_retriever.auth import authorizer_for
from cir_retriever.clients import ModelServices
from cir_retriever.core import Retriever
from cir_retriever.gallery.factory import open_store
from cir_retriever.service import RetrieverServicer
from cir_retriever.settings import RetrieverSettings, load_retriever_settings

SERVICE_NAME = RETRIEVER.grpc_name


def build_retriever(settings: RetrieverSettings) -> Retriever:
    """The core on the configured gallery store and model services (also used by in-process tests)."""
    services = ModelServices(
        settings.encoder_address,
        settings.captioner_address,
        settings.reasoner_address,
        settings.max_message_bytes,
        tls=settings.downstream_tls(),
    )
    return Retriever(settings, open_store(settings), services)


def _build(settings: RetrieverSettings, host: ServiceHost) -> Retriever:
    core = build_retriever(settings)
    retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(RetrieverServicer(core), host.server)
    return core


def main() -> int:
    return run_service(
        display_name=RETRIEVER.service.value,
        service_name=SERVICE_NAME,
        settings_loader=load_retriever_settings,
        build=_build,
        authorizer=authorizer_for,  # API keys when CIR_RETRIEVER_API_KEYS_FILE names a keys file
    )


if __name__ == "__main__":
    sys.exit(main())
