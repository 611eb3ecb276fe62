"""Tracing (cir_common.tracing): off by default, on from the OTEL_* variables; when on, one request through
two servers in this process is one trace, with a span per RPC (server and client), per stage and per Redis
call, every one carrying the request id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common import tracing
from cir_common.cache import RedisCache
from cir_common.channels import call_downstream, open_channel
from cir_common.config import ServiceSettings
from cir_common.errors import InvalidArgument
from cir_common.request_context import REQUEST_ID_HEADER
from cir_common.server import ServiceHost
from cir_common.service_kit import StageTimer
from cir_common.telemetry import TELEMETRY
from cir_common.tracing import REQUEST_ID_ATTRIBUTE, STAGE_ATTRIBUTE, exporter_names, install_tracing
from cir_tools.local_redis import free_port

SERVICE = "cir.encoder.v1.EncoderService"
MODEL_INFO = f"/{SERVICE}/GetModelInfo"
EMBED_TEXTS = f"/{SERVICE}/EmbedTexts"


# --- when tracing is on ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_BSP_SCHEDULE_DELAY": "100"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": " Console , otlp,console"}, ("console", "otlp")),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, ()),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, ("otlp",)),
    ],
)
def test_tracing_is_on_only_when_the_environment_names_an_exporter(environ, expected):
    assert exporter_names(environ) == expected


def test_an_exporter_this_suite_lacks_is_named_in_the_log_and_left_out(caplog):
    assert exporter_names({"OTEL_TRACES_EXPORTER": "zipkin,otlp"}) == ("otlp",)
    assert "zipkin" in caplog.text
    assert exporter_names({"OTEL_TRACES_EXPORTER": "zipkin"}) == ()


def _hooks() -> list[list[object]]:
    return [
        list(TELEMETRY.rpc_scopes),
        list(TELEMETRY.call_scopes),
        list(TELEMETRY.header_sources),
        list(TELEMETRY.stage_scopes),
        list(TELEMETRY.rpc_observers),
    ]


def test_off_by_default_nothing_is_registered_and_spans_are_no_ops():
    before = _hooks()
    assert install_tracing("probe", environ={}) is None
    assert _hooks() == before
    with tracing.span("anything") as span:
        assert not span.is_recording()
    with StageTimer().stage("a-stage"):
        assert not trace.get_current_span().is_recording()


def test_install_from_the_environment_and_stop(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "named-by-otel")
    before = _hooks()
    started = install_tracing("probe")
    assert started is not None
    try:
        assert started.provider.resource.attributes["service.name"] == "named-by-otel"
        assert TELEMETRY.rpc_scopes[0] is tracing.rpc_span  # outermost
        assert tracing.call_span in TELEMETRY.call_scopes
        assert tracing.trace_headers in TELEMETRY.header_sources
        assert tracing.stage_span in TELEMETRY.stage_scopes
        with pytest.raises(RuntimeError, match="already running"):
            tracing.start_tracing("probe", [])
    finally:
        started.stop()  # nothing was traced: nothing to send
    assert _hooks() == before
    started.stop()  # idempotent


def test_the_service_name_is_the_services_own_unless_otel_names_one(monkeypatch):
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    started = tracing.start_tracing("retriever", [])
    try:
        assert started.provider.resource.attributes["service.name"] == "retriever"
    finally:
        started.stop()


# --- spans of one request through two servers ------------------------------------------------------------


def _traced_to_memory() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, exporting to memory; stopped (hooks removed) afterwards."""
    exporter = InMemorySpanExporter()
    started = tracing.start_tracing("probe", [SimpleSpanProcessor(exporter)])
    try:
        yield exporter
    finally:
        started.stop()


@pytest.fixture
def spans():
    """Tracing on for the test, with the default sampler (every new trace sampled)."""
    yield from _traced_to_memory()


class _Backend(encoder_pb2_grpc.EncoderServiceServicer):
    """The downstream service: one stage, with a cache lookup and write inside it."""

    def __init__(self, cache: RedisCache) -> None:
        self.cache = cache

    async def EmbedTexts(self, request, context):
        timer = StageTimer()
        with timer.stage("embed_texts"):
            key = f"test:tracing:{uuid.uuid4().hex}"
            if await self.cache.get(key) is None:
                await self.cache.set(key, b"value")
        return encoder_pb2.EmbedTextsResponse(timings=timer.as_protos())


class _Front(encoder_pb2_grpc.EncoderServiceServicer):
    """The front service: one stage that calls the backend over a channel of `cir_common.channels`."""

    def __init__(self, backend_address: str) -> None:
        self.channel = open_channel(backend_address, 1024 * 1024)

    async def GetModelInfo(self, request, context):
        timer = StageTimer()
        with timer.stage("relay"):
            stub = encoder_pb2_grpc.EncoderServiceStub(self.channel)
            await call_downstream(
                EMBED_TEXTS, stub.EmbedTexts, encoder_pb2.EmbedTextsRequest(texts=["a"]), 10
            )
        return encoder_pb2.GetModelInfoResponse(embedding_dim=1)


async def _host(servicer: encoder_pb2_grpc.EncoderServiceServicer) -> ServiceHost:
    host = ServiceHost([SERVICE], ServiceSettings(port=0, shutdown_grace_s=5), display_name="probe")
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, host.server)
    await host.start()
    await host.set_ready()
    return host


class _Recording(_Backend):
    """The backend, keeping the metadata of each call it serves."""

    def __init__(self, cache: RedisCache) -> None:
        super().__init__(cache)
        self.metadata: list[dict[str, str]] = []

    async def EmbedTexts(self, request, context):
        self.metadata.append(dict(context.invocation_metadata() or ()))
        return await super().EmbedTexts(request, context)


async def _through_two_servers(redis_url: str, metadata: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    """One GetModelInfo through the front to the backend; the metadata the backend saw."""
    cache = RedisCache(redis_url, connect_timeout_s=5.0, socket_timeout_s=5.0)
    recording = _Recording(cache)
    backend = await _host(recording)
    front_servicer = _Front(f"127.0.0.1:{backend.port}")
    front = await _host(front_servicer)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)  # never traced
            await encoder_pb2_grpc.EncoderServiceStub(channel).GetModelInfo(
                encoder_pb2.GetModelInfoRequest(), metadata=metadata, timeout=10
            )
    finally:
        await front_servicer.channel.close()
        await front.stop()
        await backend.stop()
        await cache.close()
    return recording.metadata


def _by_name(finished: tuple[ReadableSpan, ...], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    matching = [s for s in finished if s.name == name and (kind is None or s.kind == kind)]
    assert len(matching) == 1, f"{name}: {[(s.name, s.kind) for s in finished]}"
    return matching[0]


def _parent_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return child.parent is not None and child.parent.span_id == parent.context.span_id


async def test_one_request_through_two_servers_is_one_trace(spans, redis_server):
    await _through_two_servers(redis_server.url, ((REQUEST_ID_HEADER, "req-traced-1"),))

    finished = spans.get_finished_spans()
    front_rpc = _by_name(finished, MODEL_INFO, SpanKind.SERVER)
    relay = _by_name(finished, "relay")
    call = _by_name(finished, EMBED_TEXTS, SpanKind.CLIENT)
    backend_rpc = _by_name(finished, EMBED_TEXTS, SpanKind.SERVER)
    stage = _by_name(finished, "embed_texts")
    lookup = _by_name(finished, "redis MGET")
    write = _by_name(finished, "redis SET")

    assert {s.context.trace_id for s in finished} == {front_rpc.context.trace_id}
    assert front_rpc.parent is None  # the caller sent no trace context: the request's trace starts here
    assert _parent_of(relay, front_rpc) and _parent_of(call, relay) and _parent_of(backend_rpc, call)
    assert _parent_of(stage, backend_rpc) and _parent_of(lookup, stage) and _parent_of(write, stage)
    assert backend_rpc.parent is not None and backend_rpc.parent.is_remote  # came over the wire
    assert not any("grpc.health" in s.name for s in finished)  # probes are no part of any trace
    assert len(finished) == 7
    assert {s.attributes[REQUEST_ID_ATTRIBUTE] for s in finished} == {"req-traced-1"}
    assert relay.attributes[STAGE_ATTRIBUTE] == "relay"
    assert lookup.kind == SpanKind.CLIENT and lookup.attributes["db.system.name"] == "redis"
    assert lookup.attributes["server.port"] == redis_server.port
    assert lookup.attributes["db.operation.batch.size"] == 1
    assert lookup.status.status_code == StatusCode.UNSET
    # OpenTelemetry's RPC conventions, on both ends of each call.
    for rpc, name in ((front_rpc, "GetModelInfo"), (call, "EmbedTexts"), (backend_rpc, "EmbedTexts")):
        assert rpc.attributes["rpc.system"] == "grpc" and rpc.attributes["rpc.service"] == SERVICE
        assert rpc.attributes["rpc.method"] == name and rpc.attributes["rpc.grpc.status_code"] == 0


async def test_a_request_without_an_id_gets_one_on_its_spans(spans):
    backend = await _host(_Backend(RedisCache(f"redis://127.0.0.1:{free_port()}/0")))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{backend.port}") as channel:
            await encoder_pb2_grpc.EncoderServiceStub(channel).EmbedTexts(
                encoder_pb2.EmbedTextsRequest(texts=["a"]), timeout=10
            )
    finally:
        await backend.stop()
    finished = spans.get_finished_spans()
    ids = {s.attributes.get(REQUEST_ID_ATTRIBUTE) for s in finished}
    assert len(ids) == 1 and None not in ids and len(ids.pop()) == 16
    # Nothing listens on that port: both Redis calls failed and say so; the RPC itself succeeded.
    for name in ("redis MGET", "redis SET"):
        assert _by_name(finished, name).status.status_code == StatusCode.ERROR
    assert _by_name(finished, EMBED_TEXTS, SpanKind.SERVER).status.status_code == StatusCode.UNSET


async def test_a_failed_rpc_marks_its_server_span(spans):
    class Failing(encoder_pb2_grpc.EncoderServiceServicer):
        async def EmbedTexts(self, request, context):
            with StageTimer().stage("embed_texts"):
                raise RuntimeError("boom")

    host = await _host(Failing())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await encoder_pb2_grpc.EncoderServiceStub(channel).EmbedTexts(
                    encoder_pb2.EmbedTextsRequest(texts=["a"]), timeout=10
                )
    finally:
        await host.stop()
    assert error.value.code() == grpc.StatusCode.INTERNAL
    finished = spans.get_finished_spans()
    assert _by_name(finished, EMBED_TEXTS, SpanKind.SERVER).status.status_code == StatusCode.ERROR
    stage = _by_name(finished, "embed_texts")
    assert stage.status.status_code == StatusCode.ERROR and stage.events[0].name == "exception"


async def test_a_failed_downstream_call_marks_its_client_span(spans):
    class Refusing(encoder_pb2_grpc.EncoderServiceServicer):
        async def EmbedTexts(self, request, context):
            raise InvalidArgument("texts must not be empty")

    host = await _host(Refusing())
    channel = open_channel(f"127.0.0.1:{host.port}", 1024 * 1024)
    try:
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError):
            await call_downstream(EMBED_TEXTS, stub.EmbedTexts, encoder_pb2.EmbedTextsRequest(), timeout=10)
    finally:
        await channel.close()
        await host.stop()
    finished = spans.get_finished_spans()
    client = _by_name(finished, EMBED_TEXTS, SpanKind.CLIENT)
    server = _by_name(finished, EMBED_TEXTS, SpanKind.SERVER)
    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert client.attributes["rpc.grpc.status_code"] == code == server.attributes["rpc.grpc.status_code"]
    assert client.status.status_code == StatusCode.ERROR  # the caller's call failed
    # For the server, a bad argument is the caller's fault, not its own (OpenTelemetry's RPC conventions).
    assert server.status.status_code == StatusCode.UNSET


# --- sampling ------------------------------------------------------------------------------------------


@pytest.fixture
def sampling_nothing(monkeypatch):
    """Tracing on with a parent-based sampler that samples no new trace (ratio 0), exporting to memory."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    yield from _traced_to_memory()


async def test_an_unsampled_request_makes_no_span_and_passes_the_decision_on(sampling_nothing, redis_server):
    (seen,) = await _through_two_servers(redis_server.url, ((REQUEST_ID_HEADER, "req-unsampled"),))
    assert sampling_nothing.get_finished_spans() == ()
    # The backend was told the trace is not sampled, so it did not start (and sample) a trace of its own.
    version, trace_id, _, flags = seen["traceparent"].split("-")
    assert version == "00" and int(trace_id, 16) != 0 and int(flags, 16) & 0x01 == 0  # the sampled bit
    assert seen[REQUEST_ID_HEADER] == "req-unsampled"


async def test_a_sampled_caller_is_followed_through_every_service(sampling_nothing, redis_server):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller = f"00-{trace_id}-00f067aa0ba902b7-01"
    (seen,) = await _through_two_servers(redis_server.url, (("traceparent", caller),))
    finished = sampling_nothing.get_finished_spans()
    assert len(finished) == 7  # as in the fully sampled trace above
    assert {f"{s.context.trace_id:032x}" for s in finished} == {trace_id}
    assert _by_name(finished, MODEL_INFO, SpanKind.SERVER).parent.span_id == 0x00F067AA0BA902B7
    call = _by_name(finished, EMBED_TEXTS, SpanKind.CLIENT)
    assert seen["traceparent"] == f"00-{trace_id}-{call.context.span_id:016x}-01"
