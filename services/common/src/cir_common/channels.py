"""Channels from one service of the suite to another (the retriever to the model services).

One place decides how a channel is opened (message limits, load spreading over replicas, retries, TLS) and
how a call goes out on it (`call_downstream`: the request id and trace context as metadata, inside the call
scopes that `cir_common.telemetry` holds, a CLIENT span when tracing).

With TLS the channel is a `ReloadingChannel`: its credentials follow their files (`cir_common.tls`), and
since gRPC fixes a channel's credentials when it is made, a change of the files opens a new channel for the
calls that follow while the old one finishes the calls it carries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from cir_common.request_context import outgoing_metadata
from cir_common.telemetry import TELEMETRY
from cir_common.tls import FileWatch, TlsFiles, TlsMaterial, channel_credentials

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a channel replaced after a certificate change may finish its calls before they are cancelled.
RETIRE_GRACE_S = 600.0


def channel_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Several replicas behind one DNS name: spread calls instead of pinning one connection.
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
    ]


def open_channel(
    address: str,
    max_message_bytes: int,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    tls: TlsFiles | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to `address`; `interceptors` see every call on it (a test counting calls).

    `tls`: trust its CA (the system's CAs when it names none) and present its certificate and key when it
    names them (mTLS); the files are read now (ConfigError when unusable) and again when they change.
    """
    chain = list(interceptors)
    options = channel_options(max_message_bytes)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=chain or None)
    return ReloadingChannel(address, FileWatch(tls), options, chain)


async def call_downstream(
    method: str, rpc: Callable[..., Awaitable[T]], request: Any, timeout: float | None
) -> T:
    """One unary call to another service: `rpc` (a stub's method) with `request`, inside the call scopes
    (a CLIENT span named `method`, the full method name, when tracing), carrying the request id and the
    trace context."""
    with TELEMETRY.call_scope(method):
        return await rpc(request, timeout=timeout, metadata=outgoing_metadata())


class ReloadingChannel(grpc.aio.Channel):
    """A TLS channel to one address whose credentials follow their files.

    Every call first polls the files (a stat each); after a change, that call and the ones after it go to a
    new channel made with the new credentials, and the old channel is closed once its calls are done (at
    most RETIRE_GRACE_S). Stubs made on this channel keep working across the swap: their methods pick the
    current channel at each call.
    """

    def __init__(
        self,
        address: str,
        watch: FileWatch,
        options: Sequence[tuple[str, Any]],
        interceptors: Sequence[grpc.aio.ClientInterceptor],
    ) -> None:
        self._address = address
        self._watch = watch
        self._options = list(options)
        self._interceptors = list(interceptors)
        self._channel = self._open(watch.material)
        self._retired: dict[grpc.aio.Channel, asyncio.Task[None]] = {}

    def _open(self, material: TlsMaterial) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(
            self._address,
            channel_credentials(material),
            options=self._options,
            interceptors=self._interceptors or None,
        )

    def current(self) -> grpc.aio.Channel:
        """The channel for a call made now, a new one when the files changed since the last call."""
        material = self._watch.poll()
        if material is not None:
            old, self._channel = self._channel, self._open(material)
            log.info("TLS files of the channel to %s changed: new calls use a new channel", self._address)
            task = asyncio.get_running_loop().create_task(old.close(RETIRE_GRACE_S))
            self._retired[old] = task
            task.add_done_callback(lambda _: self._retired.pop(old, None))
        return self._channel

    async def close(self, grace: float | None = None) -> None:
        retired = list(self._retired.items())
        for _, task in retired:
            task.cancel()
        await asyncio.gather(self._channel.close(grace), *(channel.close(grace) for channel, _ in retired))

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        await self.close(None)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._channel.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FollowingCallable(self, "unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FollowingCallable(self, "unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FollowingCallable(self, "stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _FollowingCallable(self, "stream_stream", method, args, kwargs)


class _FollowingCallable:
    """A stub's method on a `ReloadingChannel`: each call runs on the channel current at that moment."""

    def __init__(
        self, owner: ReloadingChannel, kind: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._owner = owner
        self._make = lambda channel: getattr(channel, kind)(method, *args, **kwargs)
        self._bound: tuple[grpc.aio.Channel, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._owner.current()
        if self._bound is None or self._bound[0] is not channel:
            self._bound = (channel, self._make(channel))
        return self._bound[1](*args, **kwargs)
