"""An OTLP trace receiver on loopback that keeps what it is sent: for tests and benchmarks of tracing.

The suite's services export with the standard OTLP gRPC exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`); this is
the other end, in process (opentelemetry-proto's TraceService), with no collector to install.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the service.name of the process that sent it
    span: trace_pb2.Span

    @property
    def name(self) -> str:
        return self.span.name

    def attribute(self, key: str) -> str | None:
        for item in self.span.attributes:
            if item.key == key:
                return item.value.string_value
        return None


class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                names = [
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ]
                service = names[0] if names else ""
                for scope_spans in resource_spans.scope_spans:
                    self._spans += [ReceivedSpan(service, span) for span in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)


@contextmanager
def running_otlp_sink() -> Iterator[tuple[OtlpSink, str]]:
    """An OtlpSink serving on a free loopback port: (sink, endpoint URL for OTEL_EXPORTER_OTLP_ENDPOINT)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    sink = OtlpSink()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield sink, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait()
