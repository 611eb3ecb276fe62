"""Asyncio gRPC server bootstrap shared by every service.

One `ServiceHost` per process: standard health (NOT_SERVING until the service says it is
ready), server reflection, message-size limits from config, one interceptor that gives
every RPC a request id, maps internal errors to status codes and reports server time, and
a graceful shutdown that turns health to NOT_SERVING before draining in-flight calls.

The interceptor also answers undecodable request messages with INVALID_ARGUMENT, asks the
service's `authorize` hook (API keys) before anything else, admits calls through a bounded gate
(max_concurrent_rpcs running, max_queued_rpcs waiting, the rest RESOURCE_EXHAUSTED at once with a
retry hint), and reports every finished call to `cir_common.telemetry`; health and reflection pass
around all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cir_common.admission import AdmissionGate, AdmissionStats
from cir_common.config import ServiceSettings
from cir_common.errors import CirError, ConfigError, InvalidArgument, status_for
from cir_common.request_context import (
    REQUEST_ID_HEADER,
    RETRY_AFTER_HEADER,
    RETRY_PUSHBACK_HEADER,
    bind_request_id,
    current_request_id,
    reset_request_id,
)
from cir_common.telemetry import TELEMETRY
from cir_common.tls import server_credentials, server_files

log = logging.getLogger(__name__)

SERVER_TIME_HEADER = "x-cir-server-ms"

# RPCs that must answer while the model is still loading, and that no credential guards.
_ALWAYS_OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# Decides whether a call may run: (full method name, the call's metadata) -> None, or raises a CirError
# (Unauthenticated, PermissionDenied, ResourceExhausted for a rate limit) that becomes its status.
Authorizer = Callable[[str, Mapping[str, str]], None]


class _ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, host: ServiceHost) -> None:
        self._host = host

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_ALWAYS_OPEN_PREFIXES):
            return handler
        incoming = dict(handler_call_details.invocation_metadata or ())
        return _wrap_handler(handler, method, incoming, self._host)


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request message that could not be parsed, so the call fails with INVALID_ARGUMENT.

    Left to grpc, a DecodeError (malformed bytes, or invalid UTF-8 in a proto3 string field) escapes before
    our wrapper runs: the caller gets UNKNOWN (INTERNAL mid-stream), the log a traceback without request id.
    """

    type_name: str
    detail: str

    def message(self, what: str) -> str:
        hint = (
            " (every string field must be valid UTF-8; binary data belongs in a bytes field)"
            if "UTF-8" in self.detail
            else ""
        )
        return (
            f"{what} is not a valid {self.type_name} message: {self.detail}{hint}; "
            "send a serialized message built from the published protos"
        )


def _tolerant(deserializer: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering an `_Undecodable` instead of raising on bytes that do not parse."""
    if deserializer is None:
        return None
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", None) or f"request message of {method}"

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as error:
            detail = str(error)
            # upb says "Error parsing message with type 'X': <why>"; the type is named already.
            _, sep, why = detail.partition("': ")
            return _Undecodable(type_name, why if sep else detail)

    return deserialize


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The request stream, failing with INVALID_ARGUMENT at the first message that did not parse.

    Servicers here iterate the stream; one that called `context.read()` itself would see the raw sentinel.
    """
    number = 0
    async for message in requests:
        if isinstance(message, _Undecodable):
            raise InvalidArgument(message.message(f"message {number} of the request stream"))
        yield message
        number += 1


def _wrap_handler(
    handler: grpc.RpcMethodHandler, method: str, incoming: Mapping[str, str], host: ServiceHost
) -> grpc.RpcMethodHandler:
    request_id = incoming.get(REQUEST_ID_HEADER)
    request_streaming = bool(handler.request_streaming)
    # A stream holds its slot for as long as it lasts: its time says nothing of when a slot frees up.
    timed = not (request_streaming or handler.response_streaming)

    async def before(context: grpc.aio.ServicerContext, request_or_iterator: Any) -> Any:
        # Set now so that an aborted call carries its request id too.
        context.set_trailing_metadata(((REQUEST_ID_HEADER, current_request_id()),))
        if host.authorize is not None:
            host.authorize(method, dict(context.invocation_metadata() or ()))
        if not host.ready:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{host.display_name} is starting (model not loaded yet); retry when health is SERVING",
            )
        if request_streaming:
            return _checked_stream(request_or_iterator)
        if isinstance(request_or_iterator, _Undecodable):
            raise InvalidArgument(request_or_iterator.message("the request"))
        return request_or_iterator

    async def fail(context: grpc.aio.ServicerContext, error: Exception) -> None:
        code, message = status_for(error)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s failed", method)
        else:
            log.info("%s -> %s: %s", method, code.name, message)
        trailers = [(REQUEST_ID_HEADER, current_request_id())]
        retry_ms = error.retry_after_ms if isinstance(error, CirError) else None
        if retry_ms is not None:
            # grpc-retry-pushback-ms is honoured by gRPC clients that have a retry policy (a Python server
            # may send it); x-cir-retry-after-ms is for every other client.
            trailers += [(RETRY_AFTER_HEADER, str(retry_ms)), (RETRY_PUSHBACK_HEADER, str(retry_ms))]
        context.set_trailing_metadata(tuple(trailers))
        await context.abort(code, message)

    def finish(context: grpc.aio.ServicerContext, started: float, cancelled: bool = False) -> None:
        elapsed_s = time.perf_counter() - started
        context.set_trailing_metadata(
            ((REQUEST_ID_HEADER, current_request_id()), (SERVER_TIME_HEADER, f"{elapsed_s * 1000.0:.3f}"))
        )
        code = grpc.StatusCode.CANCELLED if cancelled else (context.code() or grpc.StatusCode.OK)
        TELEMETRY.rpc_done(method, code, elapsed_s)
        log.debug("%s done in %.1f ms", method, elapsed_s * 1000.0)

    @contextlib.asynccontextmanager
    async def serving(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """One call of the RPC, whatever its shape: telemetry, request id, errors to statuses, the finish."""
        # Outermost: the RPC scopes (the SERVER span) cover the request id, admission and errors.
        with TELEMETRY.rpc_scope(method, incoming):
            token = bind_request_id(request_id)
            started = time.perf_counter()
            cancelled = False
            try:
                yield
            except asyncio.CancelledError:
                cancelled = True
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # noqa: BLE001 - every error becomes a status
                await fail(context, error)  # aborts: raises AbortError
            finally:
                finish(context, started, cancelled)
                reset_request_id(token)

    def wrap_unary_response(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            async with serving(context):
                request = await before(context, request_or_iterator)
                async with host.admission.admit(context.time_remaining, timed=timed):
                    return await behavior(request, context)

        return wrapped

    def wrap_stream_response(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with serving(context):
                request = await before(context, request_or_iterator)
                async with host.admission.admit(context.time_remaining, timed=timed):
                    result = behavior(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            yield item
                    else:
                        await result

        return wrapped

    common = dict(
        request_deserializer=_tolerant(handler.request_deserializer, method),
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary_response(handler.unary_unary), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary_response(handler.stream_unary), **common)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_stream_response(handler.unary_stream), **common)
    return grpc.stream_stream_rpc_method_handler(wrap_stream_response(handler.stream_stream), **common)


class ServiceHost:
    """Owns the grpc.aio server of one service process."""

    def __init__(
        self,
        service_names: Sequence[str],
        settings: ServiceSettings,
        display_name: str,
        authorize: Authorizer | None = None,
    ) -> None:
        self.service_names = tuple(service_names)
        self.settings = settings
        self.display_name = display_name
        self.authorize = authorize
        self.ready = False
        self.port: int | None = None
        limit = settings.max_message_bytes
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
        if settings.max_connection_age_s > 0:
            age_ms = int(settings.max_connection_age_s * 1000)
            options += [("grpc.max_connection_age_ms", age_ms), ("grpc.max_connection_age_grace_ms", age_ms)]
        if settings.max_concurrent_rpcs < 1 or settings.max_queued_rpcs < 0:
            raise ConfigError(
                f"max_concurrent_rpcs={settings.max_concurrent_rpcs} and max_queued_rpcs="
                f"{settings.max_queued_rpcs}: need at least 1 running call and 0 or more queued ones"
            )
        # Admission is ours, not grpc.aio.server(maximum_concurrent_rpcs=...): that one counts health and
        # reflection too (a busy replica would fail its probes and be restarted), has no queue (every call
        # past the limit is refused at once), and refuses with a bare "Concurrent RPC limit exceeded!": no
        # setting named, no retry hint, no request id.
        self.admission = AdmissionGate(
            settings.max_concurrent_rpcs, settings.max_queued_rpcs, service=display_name
        )
        self.server = grpc.aio.server(interceptors=[_ServiceInterceptor(self)], options=options)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if settings.reflection:
            reflection.enable_server_reflection(
                (*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
            )
        self._stopping = False
        self._stopped = asyncio.Event()
        # What health reports after loading: a backend check may turn it off and on again.
        self._healthy = True

    @property
    def admission_stats(self) -> AdmissionStats:
        """Counters of calls admitted, refused (queue full) and timed out or cancelled while queued."""
        return self.admission.stats

    async def start(self) -> int:
        """Binds and starts serving (health NOT_SERVING until `set_ready`). Returns the bound port."""
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{self.settings.host}:{self.settings.port}"
        # TLS when a certificate is set (mTLS with a client CA); the files are re-read when they change.
        tls = server_files(self.settings)
        if tls is None:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, server_credentials(tls))
        if port == 0:
            raise OSError(f"{self.display_name} could not bind {address}")
        await self.server.start()
        self.port = port
        security = "plaintext" if tls is None else "mTLS" if tls.ca_file else "TLS"
        log.info("%s listening on %s:%d (%s)", self.display_name, self.settings.host, port, security)
        return port

    async def set_ready(self) -> None:
        self.ready = True
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s is SERVING", self.display_name)

    async def stop(self) -> None:
        """Graceful shutdown: NOT_SERVING, optional delay, refuse new calls, drain in-flight ones."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        await self.health.enter_graceful_shutdown()
        log.info("%s shutting down: NOT_SERVING, draining in-flight calls", self.display_name)
        if self.settings.shutdown_delay_s > 0:
            await asyncio.sleep(self.settings.shutdown_delay_s)
        await self.server.stop(self.settings.shutdown_grace_s)
        self._stopped.set()
        log.info("%s stopped", self.display_name)

    async def set_serving(self, serving: bool) -> None:
        """The service's health follows a backend check (never after shutdown began: draining stays
        NOT_SERVING). The server-wide "" status stays SERVING: the process is alive, so a liveness probe on
        it does not restart every replica during a backend outage, while readiness (on the service name)
        takes the replica out of rotation."""
        if self._stopping or serving == self._healthy:
            return
        self._healthy = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self.service_names:
            await self.health.set(name, status)
        log.warning(
            "%s health is now %s",
            self.display_name,
            health_pb2.HealthCheckResponse.ServingStatus.Name(status),
        )

    async def follow(self, check: Callable[[], Awaitable[None]]) -> None:
        """Runs `check` every health_check_interval_s; a failure means NOT_SERVING until it passes again."""
        while True:
            await asyncio.sleep(self.settings.health_check_interval_s)
            try:
                await check()
            except Exception as error:  # noqa: BLE001 - any failure of the check means not serving
                if self._healthy:
                    log.warning("%s backend check failed: %s", self.display_name, error)
                await self.set_serving(False)
            else:
                await self.set_serving(True)

    async def run(
        self, load: Callable[[], Awaitable[None]], check: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Serves until SIGTERM/SIGINT: listens at once, runs `load`, then turns SERVING (and, with `check`,
        follows it: NOT_SERVING while it fails)."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        loader = asyncio.create_task(load())
        waiter = asyncio.create_task(stop_requested.wait())
        done, _ = await asyncio.wait({loader, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if loader in done:
            loader.result()  # a failed load ends the process with its error
            # What start-up made (modules, the model, its framework) lives as long as the process: moved out
            # of the collector's reach, so the collections that requests trigger scan only what requests make.
            gc.collect()
            gc.freeze()
            await self.set_ready()
            watcher = asyncio.create_task(self.follow(check)) if check is not None else None
            await waiter
            if watcher is not None:
                watcher.cancel()
        else:
            loader.cancel()
        await self.stop()
