"""OpenTelemetry traces of a service process, set up from the standard `OTEL_*` variables; off by default.

Tracing is on when the environment names somewhere to send spans: `OTEL_TRACES_EXPORTER` lists `otlp` and/or
`console`, or, with that variable unset, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
is set (the OTLP exporter then). `OTEL_TRACES_EXPORTER=none` and `OTEL_SDK_DISABLED=true` keep it off. The
rest is the SDK's and the OTLP exporter's own reading of `OTEL_*`: endpoint, headers, timeout, compression,
certificates, sampler (`OTEL_TRACES_SAMPLER`), batching (`OTEL_BSP_*`), propagators (`OTEL_PROPAGATORS`,
W3C trace context by default), resource (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`, else the service's
own name). OTLP is sent over gRPC.

When on, `cir_common.telemetry` gets: an RPC scope (a SERVER span per RPC this process serves, continuing
the caller's trace), a call scope (a CLIENT span per call to another service) and the trace context as
metadata of every such call, a span around every stage of a request (`StageTimer.stage`), and the request id
as the attribute `cir.request_id` of every span of a request. `span()` adds one more span (the Redis calls
of `cir_common.cache`); while tracing is off it costs a check of one module variable. The RPC spans follow
OpenTelemetry's RPC conventions (names `/package.Service/Method`, `rpc.system`, `rpc.service`,
`rpc.method`, `rpc.grpc.status_code`), as opentelemetry-instrumentation-grpc writes them; that package's
interceptors are not used because they cost as much as the rest of tracing (telemetry's module docstring).

Under a parent-based sampler (the default, and `parentbased_traceidratio`), a request that its first
service did not sample makes no span anywhere after it: each service sees the unsampled trace context,
passes it on to the services it calls, and skips the spans the sampler would only drop. So with 10% of
searches sampled, nine in ten cost a context lookup per span site, not a span.

The spans come from a TracerProvider of this module's own (not the process-global one), so tests can start
and stop tracing in one process. The OTLP exporter is imported only when tracing starts.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from cir_common.request_context import current_request_id
from cir_common.telemetry import TELEMETRY

log = logging.getLogger(__name__)

TRACER_NAME = "cir"
REQUEST_ID_ATTRIBUTE = "cir.request_id"
STAGE_ATTRIBUTE = "cir.stage"
EXPORTERS = ("otlp", "console")
# OpenTelemetry's RPC semantic conventions.
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_STATUS_CODE = "rpc.grpc.status_code"
# The codes a server span counts as its own failure (the conventions: the others are the caller's doing).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_tracer: trace.Tracer | None = None
# The sampler follows the parent: no span under an unsampled parent would record (see the module docstring).
_follows_parent = False
T = TypeVar("T")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "true"


def exporter_names(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The span exporters the environment asks for, in `EXPORTERS`; () means tracing stays off.

    Names of exporters this suite does not have (e.g. `zipkin`) are logged and left out.
    """
    env = os.environ if environ is None else environ
    if _flag(env, "OTEL_SDK_DISABLED"):
        return ()
    listed = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not listed:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ("otlp",) if endpoint and endpoint.strip() else ()
    names = [name.strip() for name in listed.split(",") if name.strip()]
    if "none" in names:
        return ()
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        log.warning(
            "OTEL_TRACES_EXPORTER names %s, which this service does not have; it sends spans with %s only",
            ", ".join(unknown),
            " and ".join(EXPORTERS),
        )
    return tuple(dict.fromkeys(name for name in names if name in EXPORTERS))


@contextmanager
def span(
    name: str,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[trace.Span]:
    """A span around the block, the current one inside it (a non-recording stand-in while tracing is off).

    An exception leaving the block is recorded on the span and sets its status to ERROR.
    """
    tracer = _tracer
    if tracer is None or _unsampled_parent():
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes) as current:
        yield current


def _unsampled_parent() -> bool:
    """The current span is an unsampled one that a parent-based sampler follows: a child would not record."""
    if not _follows_parent:
        return False
    parent = trace.get_current_span().get_span_context()
    return parent.is_valid and not parent.trace_flags.sampled


def _rpc_attributes(method: str) -> dict[str, AttributeValue]:
    service, _, name = method.lstrip("/").partition("/")
    return {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: name}


@contextmanager
def rpc_span(method: str, metadata: Mapping[str, str]) -> Iterator[None]:
    """The SERVER span of an RPC this process serves (an RPC scope), child of the caller's span when the
    metadata carries one; its status code is set when the RPC finishes (`_tag_server_span`)."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    caller = propagate.extract(metadata)
    parent = trace.get_current_span(caller).get_span_context()
    if _follows_parent and parent.is_valid and not parent.trace_flags.sampled:
        # Not sampled upstream: no span here, but the calls this RPC makes pass the decision on.
        token = context.attach(caller)
        try:
            yield
        finally:
            context.detach(token)
        return
    with tracer.start_as_current_span(
        method,
        context=caller,
        kind=trace.SpanKind.SERVER,
        attributes=_rpc_attributes(method),
        record_exception=False,  # an error is the RPC's status (set at the end), not an exception event
        set_status_on_exception=False,
    ):
        yield


@contextmanager
def call_span(method: str) -> Iterator[None]:
    """The CLIENT span of a call to another service (a call scope); the call's trace context points at it."""
    tracer = _tracer
    if tracer is None or _unsampled_parent():
        yield
        return
    with tracer.start_as_current_span(
        method,
        kind=trace.SpanKind.CLIENT,
        attributes=_rpc_attributes(method),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield
        except grpc.aio.AioRpcError as error:
            current.set_attribute(RPC_STATUS_CODE, error.code().value[0])
            current.set_status(Status(StatusCode.ERROR, f"{error.code().name}: {error.details()}"))
            raise
        except asyncio.CancelledError:  # the caller gave up on it (gRPC cancels the call)
            current.set_attribute(RPC_STATUS_CODE, grpc.StatusCode.CANCELLED.value[0])
            current.set_status(Status(StatusCode.ERROR, grpc.StatusCode.CANCELLED.name))
            raise
        current.set_attribute(RPC_STATUS_CODE, grpc.StatusCode.OK.value[0])


def trace_headers() -> list[tuple[str, str]]:
    """The current trace context as metadata (W3C `traceparent` unless OTEL_PROPAGATORS says otherwise)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def stage_span(stage: str) -> AbstractContextManager[trace.Span]:
    """The span of one stage of a request (what `StageTimer.stage` enters): named after the stage."""
    return span(stage, attributes={STAGE_ATTRIBUTE: stage})


def _tag_server_span(method: str, code: grpc.StatusCode, seconds: float) -> None:
    """An RPC finished (`Telemetry.rpc_observers`), still inside its SERVER span: its status code, and the
    request id, known only once the server's own code bound it (the span started before)."""
    current = trace.get_current_span()
    if not current.is_recording():
        return
    request_id = current_request_id()
    if request_id != "-":
        current.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)
    current.set_attribute(RPC_STATUS_CODE, code.value[0])
    if code in _SERVER_ERRORS:
        current.set_status(Status(StatusCode.ERROR, code.name))


def _service_resource(service: str) -> Resource:
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # Neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES named the service: use its own name.
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    return resource


@dataclass(eq=False)
class Tracing:
    """Tracing while it runs in this process: its provider, and what it registered with `TELEMETRY`."""

    service: str
    provider: TracerProvider
    _unregister: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: bool = False

    def _add(self, hooks: list[T], hook: T, *, outermost: bool = False) -> None:
        if outermost:
            hooks.insert(0, hook)
        else:
            hooks.append(hook)
        self._unregister.append(lambda: hooks.remove(hook) if hook in hooks else None)

    def _register(self) -> None:
        global _tracer, _follows_parent
        hooks = TELEMETRY
        # First: the server span covers the server's own code (request id, errors, admission).
        self._add(hooks.rpc_scopes, rpc_span, outermost=True)
        self._add(hooks.call_scopes, call_span, outermost=True)
        self._add(hooks.header_sources, trace_headers)
        self._add(hooks.stage_scopes, stage_span)
        self._add(hooks.rpc_observers, _tag_server_span)
        _follows_parent = isinstance(self.provider.sampler, ParentBased)
        _tracer = self.provider.get_tracer(TRACER_NAME)

    def flush(self, timeout_ms: int = 30_000) -> bool:
        """Exports every finished span now; False when that did not complete within `timeout_ms`."""
        return bool(self.provider.force_flush(timeout_ms))

    def stop(self) -> None:
        """Unregisters the hooks, exports what is left and shuts the exporters down (idempotent)."""
        global _tracer, _follows_parent
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        for unregister in self._unregister:
            unregister()
        self._unregister.clear()
        _tracer = None
        _follows_parent = False
        self.provider.shutdown()
        atexit.unregister(self.stop)


class _RequestIdSpans(SpanProcessor):
    """Every span started while a request id is bound carries it (`cir.request_id`)."""

    def on_start(self, span: Span, parent_context: context.Context | None = None) -> None:
        request_id = current_request_id()
        if request_id != "-":
            span.set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def start_tracing(service: str, processors: Sequence[SpanProcessor]) -> Tracing:
    """Starts tracing in this process with `processors` (which export); stop it with `Tracing.stop()`.

    Tests pass an in-memory exporter's processor; services use `install_tracing`.
    """
    if _tracer is not None:
        raise RuntimeError("tracing is already running in this process: stop it first")
    provider = TracerProvider(resource=_service_resource(service), shutdown_on_exit=False)
    provider.add_span_processor(_RequestIdSpans())
    for processor in processors:
        provider.add_span_processor(processor)
    tracing = Tracing(service, provider)
    tracing._register()
    return tracing


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol.strip().lower() != "grpc":
        log.warning("OTLP protocol %r is not available here: spans are sent over gRPC", protocol)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def install_tracing(service: str, environ: Mapping[str, str] | None = None) -> Tracing | None:
    """A service process's tracing, as the `OTEL_*` variables say (None: off). Spans are batched and the
    rest exported at process exit."""
    env = os.environ if environ is None else environ
    names = exporter_names(env)
    if not names:
        return None
    processors = [BatchSpanProcessor(_exporter(name, env)) for name in names]
    tracing = start_tracing(service, processors)
    atexit.register(tracing.stop)
    log.info("tracing on: %s sends spans with %s", service, " and ".join(names))
    return tracing
