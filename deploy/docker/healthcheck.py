"""Container health check: asks the service's own grpc.health.v1 whether it is SERVING.

Used by the images' HEALTHCHECK (and usable as an exec probe); Kubernetes uses its native gRPC probes on
the same health service instead. No credentials, no extra binary: only grpcio-health-checking, which every
image has.

    python /opt/cir/healthcheck.py encoder            # 127.0.0.1:$CIR_ENCODER_PORT (default 50051)
    python /opt/cir/healthcheck.py retriever --address 10.0.0.5:50050 --timeout 3

Exit status 0 when SERVING, 1 otherwise (NOT_SERVING while the model loads or while draining, or unreachable).
The names, gRPC service names, default ports and setting prefixes are cir_common.vocabulary's (every image
installs cir-common); it loads grpc and the protobuf descriptors, no service code.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cir_common.vocabulary import SERVICES, Service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=sorted(str(name) for name in Service))
    parser.add_argument("--address", help="host:port (default 127.0.0.1 and the service's configured port)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    args = parser.parse_args(argv)

    identity = SERVICES[Service(args.service)]
    grpc_name = identity.grpc_name
    port = os.environ.get(f"{identity.env_prefix}PORT", identity.default_port)
    address = args.address or f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=grpc_name), timeout=args.timeout
            )
    except grpc.RpcError as error:
        print(f"{args.service} at {address}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.service} at {address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
