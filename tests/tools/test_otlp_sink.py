"""The out-of-process OTLP sink counts, by service, the spans the standard OTLP exporter sends it."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from cir_tools.otlp_sink import otlp_sink_process


def _send_spans(endpoint: str, service: str, count: int) -> None:
    provider = TracerProvider(resource=Resource({SERVICE_NAME: service}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = provider.get_tracer("test")
    for index in range(count):
        with tracer.start_as_current_span(f"span-{index}"):
            pass
    provider.shutdown()


def test_counts_spans_by_service_and_stops_cleanly(tmp_path: Path) -> None:
    with otlp_sink_process(tmp_path) as sink:
        assert sink.endpoint.startswith("http://127.0.0.1:")
        _send_spans(sink.endpoint, "encoder", 3)
        _send_spans(sink.endpoint, "retriever", 2)
        counts = sink.stop()
        assert sink.stop() is counts  # idempotent: the context's exit stops it again
    assert counts == {"encoder": 3, "retriever": 2}
    assert sink.process.returncode == 143  # SIGTERM, handled: the counts were written on the way out
