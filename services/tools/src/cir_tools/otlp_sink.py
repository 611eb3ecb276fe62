"""An OTLP trace receiver on loopback that keeps what it is sent: for tests and benchmarks of tracing.

The suite's services export with the standard OTLP gRPC exporter (`OTEL_EXPORTER_OTLP_ENDPOINT`); this is
the other end (opentelemetry-proto's TraceService), with no collector to install:
- `running_otlp_sink()`, in process: the tests read the spans themselves;
- `otlp_sink_process()`, a process of its own that counts spans by service, as a collector is its own
  process in production: a benchmark that measures latency in its own process must not also decode every
  span of the suite there (that work would compete with its client threads for the interpreter lock).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from cir_tools.termination import exit_on_sigterm


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


@dataclass
class SinkProcess:
    """`python -m cir_tools.otlp_sink` running: its endpoint; `stop()` ends it and returns its counts."""

    endpoint: str
    process: subprocess.Popen[str]
    counts_file: Path
    _counts: dict[str, int] | None = None

    def stop(self) -> dict[str, int]:
        """Spans received by service name (SIGTERM: the process writes its counts and exits). Idempotent."""
        if self._counts is not None:
            return self._counts
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError("the OTLP sink process did not stop within 30 s") from None
        if not self.counts_file.exists():
            raise RuntimeError(f"the OTLP sink process exited {self.process.returncode} without its counts")
        self._counts = {str(k): int(v) for k, v in json.loads(self.counts_file.read_text()).items()}
        return self._counts


@contextmanager
def otlp_sink_process(workdir: Path) -> Iterator[SinkProcess]:
    """An OTLP sink in a child process on a free loopback port (its counts file under `workdir`)."""
    counts_file = workdir / "otlp-sink-counts.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "cir_tools.otlp_sink", "--counts", str(counts_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    sink = None
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()  # the child prints its endpoint once it serves
        if not line.startswith("http://"):
            raise RuntimeError(f"the OTLP sink process did not start (exit {process.wait(timeout=30)})")
        sink = SinkProcess(line, process, counts_file)
        yield sink
    finally:
        if sink is not None:
            sink.stop()
        elif process.poll() is None:
            process.kill()
            process.wait()


def _serve(counts_file: Path) -> None:
    exit_on_sigterm()
    with running_otlp_sink() as (sink, endpoint):
        print(endpoint, flush=True)
        try:
            while True:
                time.sleep(3600)
        finally:
            counts = Counter(span.service for span in sink.spans())
            counts_file.write_text(json.dumps(dict(counts)), encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An OTLP trace sink that counts spans by service.")
    parser.add_argument("--counts", required=True, help="where the counts go (JSON) when SIGTERM ends it")
    _serve(Path(parser.parse_args().counts))
