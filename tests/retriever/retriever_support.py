"""The retriever in this process, on loopback: its core is at hand (stage estimates, settings) and every call
it makes to a model service is counted by a client interceptor on its own channels.

Used by tests that must see what the retriever did not call; the model services are real ones (or absent).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from support.server_thread import ServerThread

from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_client.retriever import connect
from cir_retriever.__main__ import SERVICE_NAME
from cir_retriever.clients import ModelServices
from cir_retriever.core import Retriever
from cir_retriever.gallery.factory import open_store
from cir_retriever.service import RetrieverServicer
from cir_retriever.settings import RetrieverSettings


@dataclass
class ModelCalls(grpc.aio.UnaryUnaryClientInterceptor):
    """Every model-service call the retriever starts, by method name ("EditCaptions"), with its request."""

    requests: list[tuple[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        with self._lock:  # appended on the server's loop, read from the test's thread
            self.requests.append((name, request))
        return await continuation(client_call_details, request)

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(name for name, _ in self.requests)

    def of(self, name: str) -> list[Any]:
        with self._lock:
            return [request for method, request in self.requests if method == name]


@dataclass
class RunningRetriever:
    server: ThreadedRetriever
    calls: ModelCalls
    stub: retriever_pb2_grpc.RetrieverServiceStub

    @property
    def core(self) -> Retriever:
        return self.server.core

    def on_loop(self, work: Callable[[Retriever], None]) -> None:
        """Runs `work(core)` on the retriever's event loop (the only thread that touches its state)."""

        async def run() -> None:
            work(self.core)

        self.server.call(run())

    def stats(self) -> retriever_pb2.GetServiceStatsResponse:
        return self.stub.GetServiceStats(retriever_pb2.GetServiceStatsRequest(), timeout=30)

    def stop(self) -> None:
        try:
            self.server.call(self.core.close(), timeout=60)
        finally:
            self.server.stop()


class ThreadedRetriever(ServerThread):
    """A ServerThread whose Retriever core is built on the server's loop: grpc.aio channels (the model
    service clients) belong to the loop they are created on."""

    core: Retriever

    def __init__(self, settings: RetrieverSettings, calls: ModelCalls) -> None:
        servicer = RetrieverServicer(core=None)  # type: ignore[arg-type]  # the core comes in `load`

        def register(host: Any) -> Callable[[], Coroutine[Any, Any, None]]:
            retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(servicer, host.server)

            async def load() -> None:
                services = ModelServices(
                    settings.encoder_address,
                    settings.captioner_address,
                    settings.reasoner_address,
                    settings.max_message_bytes,
                    interceptors=[calls],
                )
                self.core = servicer.core = Retriever(settings, open_store(settings), services)
                await self.core.load()

            return load

        super().__init__(SERVICE_NAME, settings, register)


def start_retriever(settings: RetrieverSettings) -> RunningRetriever:
    """Starts the retriever on a free loopback port with `settings` (their port is ignored)."""
    settings.port = 0
    calls = ModelCalls()
    server = ThreadedRetriever(settings, calls)
    try:
        server.load_and_serve()
    except BaseException:
        server.stop()
        raise
    return RunningRetriever(server, calls, connect(server.address))
