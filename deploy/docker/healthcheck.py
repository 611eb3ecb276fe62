"""Container health check: asks the service's own grpc.health.v1 whether it is SERVING.

Used by the images' HEALTHCHECK (and usable as an exec probe); Kubernetes uses its native gRPC probes on
the same health service instead, except on TLS ports (kubelet's gRPC probe speaks plaintext only), where
deploy/k8s/components/tls runs this script as an exec probe. No extra binary: only grpcio-health-checking,
which every image has.

    python /opt/cir/healthcheck.py encoder            # 127.0.0.1:$CIR_ENCODER_PORT (default 50051)
    python /opt/cir/healthcheck.py retriever --address 10.0.0.5:50050 --timeout 3

TLS follows the service's own settings, read from the same environment the service reads: with
CIR_<SERVICE>_TLS_CERT_FILE set the probe speaks TLS and checks the server's certificate against
CIR_TLS_CA_FILE when set, else the service's client CA (CIR_<SERVICE>_TLS_CLIENT_CA_FILE), else the system's
CAs; with mTLS (a client CA set) it presents the service's own certificate and key, which must then carry the
client-auth usage besides server-auth (the cert-manager Certificates of deploy/k8s/components/tls do). The
certificate must name the address probed (127.0.0.1 by default; those Certificates list 127.0.0.1 and
localhost), or `--server-name` gives the name to check instead.

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

from cir_common.errors import ConfigError
from cir_common.tls import TlsFiles, channel_credentials, health_probe_tls
from cir_common.vocabulary import SERVICES, Service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=sorted(str(name) for name in Service))
    parser.add_argument("--address", help="host:port (default 127.0.0.1 and the service's configured port)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--server-name", help="TLS: the name the server's certificate must carry")
    args = parser.parse_args(argv)

    identity = SERVICES[Service(args.service)]
    grpc_name = identity.grpc_name
    port = os.environ.get(f"{identity.env_prefix}PORT", identity.default_port)
    address = args.address or f"127.0.0.1:{port}"
    tls = health_probe_tls(os.environ, identity.env_prefix)
    try:
        with _channel(address, tls, args.server_name) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=grpc_name), timeout=args.timeout
            )
    except ConfigError as error:
        print(f"{args.service} at {address}: TLS files unusable: {error}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        print(f"{args.service} at {address}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{args.service} at {address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _channel(address: str, tls: TlsFiles | None, server_name: str | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else None
    return grpc.secure_channel(address, channel_credentials(tls.load()), options=options)


if __name__ == "__main__":
    sys.exit(main())
