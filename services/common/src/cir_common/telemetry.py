"""Where the runtime kit reports what it does, for whichever operations tooling the process installed.

The server, the stage timers and the downstream channels call these hooks; `cir_common.metrics` and
`cir_common.tracing` register themselves here when their settings turn them on (`operations.install`).
With nothing registered (the default, and in most tests) every hook is a loop over an empty list.

Process-wide on purpose: one service runs per process, and a stage timer deep inside a core has no
handle on the server that started the request.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import grpc

# A finished RPC: (full method name, status code, seconds in the server).
RpcObserver = Callable[[str, grpc.StatusCode, float], None]
# A finished stage of a request (StageTimer): (stage name, seconds).
StageListener = Callable[[str, float], None]
# Wraps a stage while it runs (a tracing span): stage name -> context manager.
StageScope = Callable[[str], AbstractContextManager[object]]


@dataclass
class Telemetry:
    rpc_observers: list[RpcObserver] = field(default_factory=list)
    stage_listeners: list[StageListener] = field(default_factory=list)
    stage_scopes: list[StageScope] = field(default_factory=list)
    # Outermost first; the server's own interceptor (request id, errors, admission) runs inside them.
    server_interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
    # Added to every channel `cir_common.channels` opens to another service.
    client_interceptors: list[grpc.aio.ClientInterceptor] = field(default_factory=list)

    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        for observe in self.rpc_observers:
            observe(method, code, seconds)

    def stage_done(self, stage: str, seconds: float) -> None:
        for listen in self.stage_listeners:
            listen(stage, seconds)

    def reset(self) -> None:
        """Forget every registration (tests that install and remove tooling in one process)."""
        for hooks in (
            self.rpc_observers,
            self.stage_listeners,
            self.stage_scopes,
            self.server_interceptors,
            self.client_interceptors,
        ):
            hooks.clear()


TELEMETRY = Telemetry()
