"""Tracing across the four real service processes: one search is one trace.

An OTLP receiver (opentelemetry-proto's TraceService, gRPC on loopback) runs in this process; the four
services of a local suite (tiny models, real Redis) send it their spans (`OTEL_*` variables). After one
search the suite is stopped, which flushes every process's spans, and the search's trace is checked: every
service in it, one root, every parent in the trace, a span for each stage the search's timings list, a
server span under each of the retriever's downstream calls, the Redis calls, and the request id on all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2
from PIL import Image, ImageDraw

from cir_client.retriever import connect, index_folder, search_request
from cir_common.tracing import REQUEST_ID_ATTRIBUTE
from cir_common.vocabulary import Service
from cir_tools.local_suite import LocalSuite
from cir_tools.otlp_sink import OtlpSink, running_otlp_sink

pytestmark = pytest.mark.slow

SEARCH = "/cir.retriever.v1.RetrieverService/Search"
MODEL_SERVICES = {
    "cir.encoder.v1.EncoderService": Service.ENCODER,
    "cir.captioner.v1.CaptionerService": Service.CAPTIONER,
    "cir.reasoner.v1.ReasonerService": Service.REASONER,
}


@pytest.fixture
def receiver() -> Iterator[tuple[OtlpSink, str]]:
    with running_otlp_sink() as (sink, endpoint):
        yield sink, endpoint


def _image(path: Path, colour: tuple[int, int, int], size: int = 96) -> Path:
    image = Image.new("RGB", (size, size), (240, 240, 235))
    ImageDraw.Draw(image).rectangle((size // 4, size // 3, 3 * size // 4, 2 * size // 3), fill=colour)
    image.save(path)
    return path


def test_one_search_is_one_trace_across_the_four_services(receiver, tiny_pack, tmp_path):
    collector, endpoint = receiver
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for index, colour in enumerate([(200, 30, 30), (30, 160, 40), (40, 60, 200)]):
        _image(gallery / f"bar-{index}.png", colour)
    reference = _image(tmp_path / "reference.png", (230, 200, 20), size=112)  # not in the gallery: no cache

    suite = LocalSuite(
        profile=tiny_pack,
        workdir=tmp_path / "suite",
        extra_env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            # Generous stage budgets and short answers: the search runs every stage, none degrades.
            "CIR_RETRIEVER_CAPTIONER_BUDGET_S": "300",
            "CIR_RETRIEVER_REASONER_BUDGET_S": "300",
            "CIR_REASONER_MAX_OUTPUT_TOKENS": "48",
        },
    )
    request_id = f"e2e-trace-{uuid.uuid4().hex[:8]}"
    try:
        suite.start(timeout_s=400)
        assert suite.redis is not None, "the traced suite must run with a real Redis"
        stub = connect(suite.retriever_address)
        assert index_folder(stub, "traced", gallery).counts == {"indexed": 3}
        response = stub.Search(
            search_request("traced", "the same bar but in purple", image=reference, strategy="cvsi"),
            metadata=((("x-request-id", request_id),)),
            timeout=300,
        )
    finally:
        suite.stop()  # every service exports what it still holds as it exits

    spans = collector.spans()
    (search,) = [s for s in spans if s.name == SEARCH and s.attribute(REQUEST_ID_ATTRIBUTE) == request_id]
    trace_id = search.span.trace_id
    trace = [s for s in spans if s.span.trace_id == trace_id]
    by_id = {s.span.span_id: s for s in trace}
    assert len(by_id) == len(trace)

    # One trace over the four processes, one root (the Search call: its caller sent no trace context), every
    # other span's parent in the trace.
    assert search.service == Service.RETRIEVER and search.span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert {s.service for s in trace} == {str(name) for name in Service}
    assert [s for s in trace if not s.span.parent_span_id] == [search]
    orphans = [
        (s.service, s.name) for s in trace if s.span.parent_span_id and s.span.parent_span_id not in by_id
    ]
    assert orphans == []
    assert {s.attribute(REQUEST_ID_ATTRIBUTE) for s in trace} == {request_id}

    # A span per stage of the search's timings, in the retriever, under the Search span.
    stages = {timing.stage for timing in response.timings}
    assert {"embed_reference_image", "captions", "added_objects", "search"} <= stages
    retriever_spans = {s.name: s for s in trace if s.service == Service.RETRIEVER}
    assert stages <= set(retriever_spans)
    for stage in stages:
        assert by_id[retriever_spans[stage].span.parent_span_id] is search

    # Each downstream call: a client span in the retriever under a stage (or, for the encoder's model info,
    # checked against the collection's, under the Search span), and under it the model service's server span
    # for the same method, in that service.
    calls = [
        s for s in trace if s.service == Service.RETRIEVER and s.span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    ]
    called = set()
    for call in calls:
        caller = by_id[call.span.parent_span_id]
        assert caller.name in stages or caller is search, call.name
        (served,) = [s for s in trace if s.span.parent_span_id == call.span.span_id]
        assert served.span.kind == trace_pb2.Span.SPAN_KIND_SERVER and served.name == call.name
        service = MODEL_SERVICES[call.name.lstrip("/").split("/")[0]]
        assert served.service == service
        called.add(service)
    assert called == set(MODEL_SERVICES.values())

    # The model services' own stages and their Redis calls are in the trace too.
    assert any(s.service == Service.CAPTIONER and s.name == "generate" for s in trace)
    assert any(s.service == Service.REASONER and s.name == "generate" for s in trace)
    redis_calls = [s for s in trace if s.name.startswith("redis ")]
    assert redis_calls and all(s.span.kind == trace_pb2.Span.SPAN_KIND_CLIENT for s in redis_calls)
    assert {s.service for s in redis_calls} >= {Service.ENCODER, Service.CAPTIONER}
