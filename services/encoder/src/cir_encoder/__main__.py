"""`python -m cir_encoder`: run the encoder service."""

from __future__ import annotations

import sys

from cir.encoder.v1 import encoder_pb2_grpc
from cir_common.server import ServiceHost
from cir_common.service_kit import run_service
from cir_common.vocabulary import ENCODER
from cir_encoder.service import EncoderServicer
from cir_encoder.settings import EncoderSettings, load_encoder_settings

SERVICE_NAME = ENCODER.grpc_name


def _build(settings: EncoderSettings, host: ServiceHost) -> EncoderServicer:
    servicer = EncoderServicer(settings)
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, host.server)
    return servicer


def main() -> int:
    return run_service(
        display_name=ENCODER.service.value,
        service_name=SERVICE_NAME,
        settings_loader=load_encoder_settings,
        build=_build,
    )


if __name__ == "__main__":
    sys.exit(main())
