"""Where the runtime kit reports what it does, for whichever operations tooling the process installed.

The server, the stage timers and the downstream calls call these hooks; `cir_common.metrics` and
`cir_common.tracing` register themselves here when their settings turn them on (`operations.install`).
With nothing registered (the default, and in most tests) every hook is a loop over an empty list or a
no-op context.

Scopes are context managers entered around a piece of work (a tracing span): the server enters the RPC
scopes around every call it serves, `cir_common.channels.call` the call scopes around every call to another
service, `StageTimer` the stage scopes around every stage. They are hooks rather than gRPC interceptors on
purpose: grpc.aio runs an interceptor through extra objects and tasks on every call, which measured about
as much as the tracing itself (issue 16: each of the server and client interceptors cost ~1% of a 12 ms
search at p50 on 2 cores).

Process-wide on purpose: one service runs per process, and a stage timer deep inside a core has no
handle on the server that started the request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field

import grpc

# A finished RPC: (full method name, status code, seconds in the server).
RpcObserver = Callable[[str, grpc.StatusCode, float], None]
# A finished stage of a request (StageTimer): (stage name, seconds).
StageListener = Callable[[str, float], None]
# Wraps a stage while it runs (a tracing span): stage name -> context manager.
StageScope = Callable[[str], AbstractContextManager[object]]
# Wraps an RPC this process serves: (full method name, the call's metadata) -> context manager.
RpcScope = Callable[[str, Mapping[str, str]], AbstractContextManager[object]]
# Wraps a call to another service: full method name -> context manager.
CallScope = Callable[[str], AbstractContextManager[object]]
# Metadata every call to another service carries (the trace context): () -> (key, value) pairs.
HeaderSource = Callable[[], Sequence[tuple[str, str]]]


@contextmanager
def _nested(scopes: list[AbstractContextManager[object]]) -> Iterator[None]:
    with ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(scope)
        yield


def _entered(scopes: list[AbstractContextManager[object]]) -> AbstractContextManager[object]:
    """One context for `scopes`, the first outermost; the cheapest that will do (most calls have none)."""
    if not scopes:
        return nullcontext()
    return scopes[0] if len(scopes) == 1 else _nested(scopes)


@dataclass
class Telemetry:
    rpc_observers: list[RpcObserver] = field(default_factory=list)
    stage_listeners: list[StageListener] = field(default_factory=list)
    stage_scopes: list[StageScope] = field(default_factory=list)
    rpc_scopes: list[RpcScope] = field(default_factory=list)
    call_scopes: list[CallScope] = field(default_factory=list)
    header_sources: list[HeaderSource] = field(default_factory=list)

    def rpc_done(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        for observe in self.rpc_observers:
            observe(method, code, seconds)

    def stage_done(self, stage: str, seconds: float) -> None:
        for listen in self.stage_listeners:
            listen(stage, seconds)

    def stage_scope(self, stage: str) -> AbstractContextManager[object]:
        """The stage scopes, first registered outermost, as one context (a no-op one when there are none)."""
        return _entered([scope(stage) for scope in self.stage_scopes])

    def rpc_scope(self, method: str, metadata: Mapping[str, str]) -> AbstractContextManager[object]:
        """The RPC scopes, first registered outermost, as one context (a no-op one when there are none)."""
        return _entered([scope(method, metadata) for scope in self.rpc_scopes])

    def call_scope(self, method: str) -> AbstractContextManager[object]:
        """The call scopes, first registered outermost, as one context (a no-op one when there are none)."""
        return _entered([scope(method) for scope in self.call_scopes])

    def outgoing_headers(self) -> list[tuple[str, str]]:
        return [header for source in self.header_sources for header in source()]

    def reset(self) -> None:
        """Forget every registration (tests that install and remove tooling in one process)."""
        for hooks in (
            self.rpc_observers,
            self.stage_listeners,
            self.stage_scopes,
            self.rpc_scopes,
            self.call_scopes,
            self.header_sources,
        ):
            hooks.clear()


TELEMETRY = Telemetry()
