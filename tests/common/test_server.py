"""The server bootstrap: health, reflection, limits, error mapping, request ids, graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_common.config import ServiceSettings
from cir_common.errors import ConfigError, InvalidArgument
from cir_common.request_context import configure_logging
from cir_common.server import (
    RETRY_AFTER_HEADER,
    RETRY_PUSHBACK_HEADER,
    SERVER_TIME_HEADER,
    ServiceHost,
)

SERVICE = "cir.encoder.v1.EncoderService"
STREAM_SERVICE = "cir.retriever.v1.RetrieverService"
log = logging.getLogger("tests.server")


class _ProbeServicer(encoder_pb2_grpc.EncoderServiceServicer):
    """A stand-in service to exercise the bootstrap; no model involved."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.model_info_calls = 0
        self.embed_calls = 0

    async def GetModelInfo(self, request, context):
        self.model_info_calls += 1
        self.entered.set()
        await self.release.wait()
        return encoder_pb2.GetModelInfoResponse(embedding_dim=7)

    async def EmbedTexts(self, request, context):
        self.embed_calls += 1
        log.info("embedding %d texts", len(request.texts))
        if not request.texts:
            raise InvalidArgument("texts is empty: send at least one text")
        if request.texts[0] == "crash":
            raise RuntimeError("boom")
        return encoder_pb2.EmbedTextsResponse()


class _StreamProbeServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    """Client-streaming methods (bidirectional and stream-unary), to exercise the request-stream paths."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def IngestImages(self, request_iterator, context):
        async for request in request_iterator:
            self.received.append(request.image.id)
            yield retriever_pb2.IngestImagesResponse(item=retriever_pb2.IngestItemResult(id=request.image.id))

    async def ImportGalleryFeatures(self, request_iterator, context):
        async for request in request_iterator:
            self.received.append(request.collection)
        return retriever_pb2.ImportGalleryFeaturesResponse(received=len(self.received))


async def _start(**overrides: object):
    settings = ServiceSettings(
        port=0, max_message_bytes=1024 * 1024, shutdown_delay_s=0.5, shutdown_grace_s=10
    )
    for name, value in overrides.items():
        setattr(settings, name, value)
    host = ServiceHost([SERVICE, STREAM_SERVICE], settings, display_name="probe")
    servicer = _ProbeServicer()
    streams = _StreamProbeServicer()
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, host.server)
    retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(streams, host.server)
    port = await host.start()
    return host, servicer, streams, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


@pytest.fixture
async def host_and_channel():
    host, servicer, _, channel = await _start()
    yield host, servicer, channel
    servicer.release.set()
    await channel.close()
    await host.stop()


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status


async def test_run_loads_then_serves_with_the_start_up_heap_frozen_and_stops_on_sigterm():
    settings = ServiceSettings(port=0, shutdown_delay_s=0.1, shutdown_grace_s=5)
    host = ServiceHost([SERVICE], settings, display_name="probe")
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(_ProbeServicer(), host.server)
    loaded = asyncio.Event()

    async def load() -> None:
        loaded.set()

    frozen_before = gc.get_freeze_count()
    running = asyncio.create_task(host.run(load))
    try:
        await asyncio.wait_for(loaded.wait(), 30)
        while host.port is None:
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            for _ in range(500):
                if await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.01)
            assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
        # What start-up made is out of the collector's reach: request-time collections skip it.
        assert gc.get_freeze_count() > frozen_before
        os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler turns it into a graceful stop
        await asyncio.wait_for(running, 30)
    finally:
        gc.unfreeze()
        if not running.done():
            running.cancel()


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


# -- requests that are not valid protobuf -------------------------------------------------------------------

EMBED_TEXTS = f"/{SERVICE}/EmbedTexts"
INGEST = f"/{STREAM_SERVICE}/IngestImages"
IMPORT = f"/{STREAM_SERVICE}/ImportGalleryFeatures"

# Each fails to parse as an EmbedTextsRequest: (bytes, what the parser says).
MALFORMED = {
    # field 2 (normalize), a varint whose continuation bit never ends
    "truncated varint": (b"\x10\xff", "Wire format was corrupt"),
    # field 1 with wire type 7, which does not exist (a known wire type on the wrong field is legal: unknown)
    "invalid wire type": (b"\x0f\x00", "Wire format was corrupt"),
    # field 1 (texts, a string) holding the bytes ff fe
    "invalid UTF-8 in a string": (b"\x0a\x02\xff\xfe", "String field had bad UTF-8"),
}


@pytest.fixture
async def probe_with_streams():
    host, servicer, streams, channel = await _start()
    await host.set_ready()
    yield host, servicer, streams, channel
    servicer.release.set()
    await channel.close()
    await host.stop()


@pytest.mark.parametrize(("raw", "why"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_unary_request_is_invalid_argument_logged_with_its_request_id(
    probe_with_streams, raw, why
):
    _, servicer, _, channel = probe_with_streams
    stream = io.StringIO()
    configure_logging("probe", "INFO", stream=stream)
    try:
        # No serializers: the bytes go on the wire as they are.
        call = channel.unary_unary(EMBED_TEXTS)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(raw, metadata=(("x-request-id", "rid-bad"),), timeout=5)
    finally:
        logging.getLogger().handlers.clear()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details()
    assert details.startswith(f"the request is not a valid cir.encoder.v1.EmbedTextsRequest message: {why}")
    assert details.endswith("send a serialized message built from the published protos")
    assert ("x-request-id", "rid-bad") in tuple(err.value.trailing_metadata())
    assert servicer.embed_calls == 0
    # The same call with well-formed bytes goes through the tolerant deserializer to the servicer.
    answer = await call(encoder_pb2.EmbedTextsRequest(texts=["a"]).SerializeToString(), timeout=5)
    assert encoder_pb2.EmbedTextsResponse.FromString(answer) == encoder_pb2.EmbedTextsResponse()
    assert servicer.embed_calls == 1
    output = stream.getvalue()
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "INVALID_ARGUMENT" in line]
    assert len(lines) == 1 and "[rid-bad]" in lines[0]


async def test_a_malformed_message_in_a_bidirectional_stream_is_invalid_argument(probe_with_streams):
    _, _, streams, channel = probe_with_streams
    good = retriever_pb2.IngestImagesRequest(
        collection="c", image=retriever_pb2.GalleryImage(id="first")
    ).SerializeToString()

    async def requests():
        yield good
        yield b"\x0a\x02\xff\xfe"  # collection: invalid UTF-8
        yield good

    call = channel.stream_stream(INGEST)(requests(), metadata=(("x-request-id", "rid-stream"),), timeout=5)
    answers = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for answer in call:
            answers.append(retriever_pb2.IngestImagesResponse.FromString(answer))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(
        "message 1 of the request stream is not a valid cir.retriever.v1.IngestImagesRequest message: "
    )
    assert "UTF-8" in err.value.details()
    assert ("x-request-id", "rid-stream") in tuple(err.value.trailing_metadata())
    assert [a.item.id for a in answers] == ["first"]  # the messages before the bad one were served
    assert streams.received == ["first"]


async def test_a_malformed_message_in_a_client_stream_is_invalid_argument(probe_with_streams):
    _, _, streams, channel = probe_with_streams

    async def requests():
        yield retriever_pb2.ImportGalleryFeaturesRequest(collection="c").SerializeToString()
        yield b"\x18\x80\x80"  # embedding_dim: a varint cut off
        yield retriever_pb2.ImportGalleryFeaturesRequest(collection="c").SerializeToString()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await channel.stream_unary(IMPORT)(requests(), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(
        "message 1 of the request stream is not a valid cir.retriever.v1.ImportGalleryFeaturesRequest message"
    )
    assert streams.received == ["c"]


# -- admission control ---------------------------------------------------------------------------------------


async def _wait_until(condition, what: str) -> None:
    for _ in range(1000):  # a state, with a generous bound: no assumption on the machine's speed
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never reached: {what}")


@pytest.fixture
async def one_slot():
    """A host with one call slot and one queue place; GetModelInfo holds its slot until `release`."""
    host, servicer, streams, channel = await _start(max_concurrent_rpcs=1, max_queued_rpcs=1)
    await host.set_ready()
    yield host, servicer, streams, channel
    servicer.release.set()
    await channel.close()
    await host.stop()


async def test_a_call_finding_the_queue_full_is_refused_at_once_with_a_retry_hint(one_slot):
    host, servicer, _, channel = one_slot
    stub = encoder_pb2_grpc.EncoderServiceStub(channel)
    running = asyncio.ensure_future(stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=60))
    await asyncio.wait_for(servicer.entered.wait(), 30)
    queued = asyncio.ensure_future(stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=60))
    await _wait_until(lambda: host.admission.waiting == 1, "the second call queued")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.EmbedTexts(
            encoder_pb2.EmbedTextsRequest(texts=["a"]), metadata=(("x-request-id", "rid-full"),), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrent_rpcs" in err.value.details() and "max_queued_rpcs" in err.value.details()
    trailers = dict(err.value.trailing_metadata())
    assert trailers["x-request-id"] == "rid-full"
    assert int(trailers[RETRY_AFTER_HEADER]) >= 50
    assert trailers[RETRY_PUSHBACK_HEADER] == trailers[RETRY_AFTER_HEADER]
    assert servicer.embed_calls == 0

    # Health is never limited: a saturated replica must still answer its probes.
    assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING

    servicer.release.set()
    assert (await asyncio.wait_for(running, 30)).embedding_dim == 7
    assert (await asyncio.wait_for(queued, 30)).embedding_dim == 7
    stats = host.admission_stats
    assert (stats.admitted, stats.waited, stats.rejected) == (2, 1, 1)
    await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["a"]), timeout=30)  # served again


async def test_a_queued_call_whose_deadline_passes_leaves_the_queue_without_running(one_slot):
    host, servicer, _, channel = one_slot
    stub = encoder_pb2_grpc.EncoderServiceStub(channel)
    running = asyncio.ensure_future(stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=60))
    await asyncio.wait_for(servicer.entered.wait(), 30)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        # Long enough to reach the queue on a loaded machine; nothing here depends on how long it is.
        await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["late"]), timeout=2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _wait_until(lambda: host.admission_stats.queue_timeouts == 1, "the queue timeout counted")
    assert host.admission.waiting == 0

    servicer.release.set()
    await asyncio.wait_for(running, 30)
    await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["next"]), timeout=30)
    assert servicer.embed_calls == 1  # only "next": the timed-out call never ran
    assert host.admission_stats.admitted == 2


async def test_a_queued_call_cancelled_by_its_client_leaves_the_queue(one_slot):
    host, servicer, _, channel = one_slot
    stub = encoder_pb2_grpc.EncoderServiceStub(channel)
    running = asyncio.ensure_future(stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=60))
    await asyncio.wait_for(servicer.entered.wait(), 30)
    queued = stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["gone"]), timeout=60)
    await _wait_until(lambda: host.admission.waiting == 1, "the call queued")
    queued.cancel()
    await _wait_until(lambda: host.admission_stats.queue_cancelled == 1, "the cancellation counted")
    assert host.admission.waiting == 0

    # Its place is free again: another call can queue, and runs once the slot frees.
    servicer.release.set()
    await asyncio.wait_for(running, 30)
    await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["next"]), timeout=30)
    assert servicer.embed_calls == 1
    assert host.admission.running == 0


async def _one_slot_host_with_an_open_stream():
    """A host admitting one call at a time (no queue), with a client stream started, served once and left
    open waiting for more: (host, servicer, channel, the stream call). The caller stops host and channel."""
    host, servicer, _, channel = await _start(max_concurrent_rpcs=1, max_queued_rpcs=0)
    try:
        await host.set_ready()
        ingest = retriever_pb2_grpc.RetrieverServiceStub(channel).IngestImages(timeout=60)
        await ingest.write(
            retriever_pb2.IngestImagesRequest(collection="c", image=retriever_pb2.GalleryImage(id="a"))
        )
        assert (await ingest.read()).item.id == "a"  # the stream runs, and waits for more
    except BaseException:
        servicer.release.set()
        await channel.close()
        await host.stop()
        raise
    return host, servicer, channel, ingest


async def test_a_client_stream_holds_one_slot_for_its_whole_length():
    host, servicer, channel, ingest = await _one_slot_host_with_an_open_stream()
    try:
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["a"]), timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        await ingest.done_writing()
        assert await ingest.read() == grpc.aio.EOF
        await _wait_until(lambda: host.admission.running == 0, "the stream's slot released")
        await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["a"]), timeout=30)
        assert host.admission_stats.rejected == 1
    finally:
        servicer.release.set()
        await channel.close()
        await host.stop()


async def test_admission_settings_are_checked_at_start():
    with pytest.raises(ConfigError, match="max_concurrent_rpcs=0"):
        ServiceHost([SERVICE], ServiceSettings(max_concurrent_rpcs=0), display_name="probe")


async def test_a_stream_cancelled_by_its_client_gives_its_slot_back():
    host, servicer, channel, ingest = await _one_slot_host_with_an_open_stream()
    try:
        assert host.admission.running == 1
        ingest.cancel()
        await _wait_until(lambda: host.admission.running == 0, "the cancelled stream's slot released")
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["a"]), timeout=30)
    finally:
        servicer.release.set()
        await channel.close()
        await host.stop()
