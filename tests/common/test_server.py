"""The server bootstrap: health, reflection, limits, error mapping, request ids, graceful shutdown."""

from __future__ import annotations

import asyncio
import io
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common.config import ServiceSettings
from cir_common.errors import InvalidArgument
from cir_common.request_context import configure_logging
from cir_common.server import SERVER_TIME_HEADER, ServiceHost

SERVICE = "cir.encoder.v1.EncoderService"
log = logging.getLogger("tests.server")


class _ProbeServicer(encoder_pb2_grpc.EncoderServiceServicer):
    """A stand-in service to exercise the bootstrap; no model involved."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def GetModelInfo(self, request, context):
        self.entered.set()
        await self.release.wait()
        return encoder_pb2.GetModelInfoResponse(embedding_dim=7)

    async def EmbedTexts(self, request, context):
        log.info("embedding %d texts", len(request.texts))
        if not request.texts:
            raise InvalidArgument("texts is empty: send at least one text")
        if request.texts[0] == "crash":
            raise RuntimeError("boom")
        return encoder_pb2.EmbedTextsResponse()


@pytest.fixture
async def host_and_channel():
    settings = ServiceSettings(
        port=0, max_message_bytes=1024 * 1024, shutdown_delay_s=0.5, shutdown_grace_s=10
    )
    host = ServiceHost([SERVICE], settings, display_name="probe")
    servicer = _ProbeServicer()
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, host.server)
    port = await host.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield host, servicer, channel
    servicer.release.set()
    await channel.close()
    await host.stop()


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def test_health_is_not_serving_until_ready(host_and_channel):
    host, _, channel = host_and_channel
    assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await _health(channel, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    stub = encoder_pb2_grpc.EncoderServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["a"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "not loaded yet" in err.value.details()

    await host.set_ready()
    assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert await _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
    await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["a"]), timeout=5)


async def test_reflection_lists_the_service(host_and_channel):
    host, _, _ = host_and_channel
    sync_channel = grpc.insecure_channel(f"127.0.0.1:{host.port}")
    try:
        database = ProtoReflectionDescriptorDatabase(sync_channel)
        services = await asyncio.to_thread(database.get_services)
        assert SERVICE in services
        assert "grpc.health.v1.Health" in services
        file_desc = await asyncio.to_thread(database.FindFileContainingSymbol, SERVICE)
        assert file_desc.name == "cir/encoder/v1/encoder.proto"
    finally:
        sync_channel.close()


async def test_message_over_the_limit_is_resource_exhausted(host_and_channel):
    host, _, channel = host_and_channel
    await host.set_ready()
    stub = encoder_pb2_grpc.EncoderServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["x" * (2 * 1024 * 1024)]), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_errors_map_to_status_codes_with_request_id(host_and_channel):
    host, _, channel = host_and_channel
    await host.set_ready()
    stub = encoder_pb2_grpc.EncoderServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.EmbedTexts(
            encoder_pb2.EmbedTextsRequest(), metadata=(("x-request-id", "req-123"),), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "texts is empty: send at least one text"
    assert ("x-request-id", "req-123") in tuple(err.value.trailing_metadata())

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["crash"]), timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "RuntimeError" in err.value.details()

    call = stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["ok"]), timeout=5)
    await call
    trailers = dict(await call.trailing_metadata())
    assert len(trailers["x-request-id"]) == 16  # generated when the caller sent none
    assert float(trailers[SERVER_TIME_HEADER]) >= 0.0


async def test_every_log_line_carries_the_request_id(host_and_channel):
    host, _, channel = host_and_channel
    await host.set_ready()
    stream = io.StringIO()
    configure_logging("probe", "INFO", stream=stream)
    try:
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        await stub.EmbedTexts(
            encoder_pb2.EmbedTextsRequest(texts=["a", "b"]), metadata=(("x-request-id", "rid-42"),), timeout=5
        )
    finally:
        logging.getLogger().handlers.clear()
    lines = [line for line in stream.getvalue().splitlines() if "embedding 2 texts" in line]
    assert len(lines) == 1
    assert "probe [rid-42] tests.server: embedding 2 texts" in lines[0]


async def test_shutdown_turns_not_serving_and_drains_in_flight_calls(host_and_channel):
    host, servicer, channel = host_and_channel
    await host.set_ready()
    stub = encoder_pb2_grpc.EncoderServiceStub(channel)
    in_flight = asyncio.ensure_future(stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=20))
    await asyncio.wait_for(servicer.entered.wait(), 5)

    stopping = asyncio.ensure_future(host.stop())
    await asyncio.sleep(0.1)  # inside shutdown_delay_s: still answering, but NOT_SERVING
    assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not in_flight.done()

    servicer.release.set()
    response = await asyncio.wait_for(in_flight, 10)
    assert response.embedding_dim == 7
    await asyncio.wait_for(stopping, 10)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=2)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_health_follows_a_backend_check(host_and_channel):
    """A service whose backend goes away (the retriever's Milvus) reports NOT_SERVING until it is back."""
    host, _, channel = host_and_channel
    host.settings.health_check_interval_s = 0.02
    await host.set_ready()
    backend_up = True

    async def check() -> None:
        if not backend_up:
            raise ConnectionError("backend unreachable")

    async def wait_for(status: int) -> None:
        for _ in range(500):  # a state, with a bound: no assumption on the machine's speed
            if await _health(channel, SERVICE) == status:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"health never became {status}")

    follower = asyncio.create_task(host.follow(check))
    try:
        await wait_for(health_pb2.HealthCheckResponse.SERVING)
        backend_up = False
        await wait_for(health_pb2.HealthCheckResponse.NOT_SERVING)
        # the process itself is alive: liveness on "" must not restart it during a backend outage
        assert await _health(channel, "") == health_pb2.HealthCheckResponse.SERVING
        backend_up = True
        await wait_for(health_pb2.HealthCheckResponse.SERVING)
    finally:
        follower.cancel()
