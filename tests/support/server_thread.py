"""Runs a real ServiceHost on loopback in a background thread with its own event loop.

Tests then talk to it over real gRPC with ordinary (sync) stubs; `stop()` shuts it down
gracefully and joins the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc

from cir_common.config import ServiceSettings
from cir_common.server import ServiceHost

Register = Callable[[ServiceHost], Callable[[], Awaitable[None]]]


class ServerThread:
    def __init__(self, service_name: str, settings: ServiceSettings, register: Register) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def create() -> ServiceHost:  # grpc.aio servers belong to the loop they are made on
            return ServiceHost([service_name], settings, display_name=service_name.rsplit(".", 1)[-1])

        self.host: ServiceHost = self.call(create())
        self._load = register(self.host)
        self.port = self.call(self.host.start())
        self.address = f"127.0.0.1:{self.port}"

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 300) -> Any:
        """Runs a coroutine on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def load_and_serve(self) -> None:
        async def load_then_ready() -> None:
            await self._load()
            await self.host.set_ready()

        self.call(load_then_ready())

    def channel(self) -> grpc.Channel:
        limit = self.host.settings.max_message_bytes
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", -1)]
        return grpc.insecure_channel(self.address, options=options)

    def stop(self) -> None:
        try:
            self.call(self.host.stop(), timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
