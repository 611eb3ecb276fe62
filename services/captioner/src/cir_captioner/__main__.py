"""`python -m cir_captioner`: run the captioner service."""

from __future__ import annotations

import sys

from cir.captioner.v1 import captioner_pb2_grpc
from cir_captioner.service import CaptionerServicer
from cir_captioner.settings import CaptionerSettings, load_captioner_settings
from cir_common.server import ServiceHost
from cir_common.service_kit import run_service
from cir_common.vocabulary import CAPTIONER

SERVICE_NAME = CAPTIONER.grpc_name


def _build(settings: CaptionerSettings, host: ServiceHost) -> CaptionerServicer:
    servicer = CaptionerServicer(settings)
    captioner_pb2_grpc.add_CaptionerServiceServicer_to_server(servicer, host.server)
    return servicer


def main() -> int:
    return run_service(
        display_name=CAPTIONER.service.value,
        service_name=SERVICE_NAME,
        settings_loader=load_captioner_settings,
        build=_build,
    )


if __name__ == "__main__":
    sys.exit(main())
