"""The retriever's channels spread calls over every replica behind one address (round_robin).

On Kubernetes a headless Service resolves to one address per ready pod; here the `ipv4:` target lists two
replica addresses on loopback, which the same channel settings see the same way.
"""

from __future__ import annotations

import grpc
import pytest

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_retriever.clients import Budget, ModelServices

CALLS = 40


class CountingEncoder(encoder_pb2_grpc.EncoderServiceServicer):
    """Answers GetModelInfo with its replica's name (the routing is under test, not a model)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    async def GetModelInfo(self, request, context):
        self.calls += 1
        return encoder_pb2.GetModelInfoResponse(model=common_pb2.ModelIdentity(name=self.name))


@pytest.fixture
async def replicas():
    servers, servicers, ports = [], [], []
    for name in ("replica-a", "replica-b"):
        server = grpc.aio.server()
        servicer = CountingEncoder(name)
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        servicers.append(servicer)
    yield servicers, ports
    for server in servers:
        await server.stop(grace=None)


async def test_calls_are_spread_over_every_replica(replicas):
    servicers, ports = replicas
    address = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    services = ModelServices(address, address, address, 4 * 1024 * 1024)
    try:
        answered = [
            (await services.encoder.model_info(Budget.starting_now(10))).model.name for _ in range(CALLS)
        ]
    finally:
        await services.close()
    assert sum(s.calls for s in servicers) == CALLS
    # round_robin alternates over ready subchannels; a pinned connection would give one replica all 40
    for servicer in servicers:
        assert servicer.calls >= CALLS // 4, (servicer.name, servicer.calls)
    assert set(answered) == {"replica-a", "replica-b"}
