"""Channels from one service of the suite to another (the retriever to the model services).

One place decides how a channel is opened: message limits, load spreading over replicas, retries, and
whatever `cir_common.telemetry` adds to every outgoing call (tracing).
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from cir_common.telemetry import TELEMETRY


def channel_options(max_message_bytes: int) -> list[tuple[str, int | str]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Several replicas behind one DNS name: spread calls instead of pinning one connection.
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
    ]


def open_channel(
    address: str, max_message_bytes: int, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
) -> grpc.aio.Channel:
    """An asyncio channel to `address`; `interceptors` run inside the process-wide ones (tracing)."""
    chain = [*TELEMETRY.client_interceptors, *interceptors]
    return grpc.aio.insecure_channel(
        address, options=channel_options(max_message_bytes), interceptors=chain or None
    )
