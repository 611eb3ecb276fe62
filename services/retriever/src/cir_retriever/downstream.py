"""Calls from the retriever to the model services: channels, deadlines, request ids.

Every call gets the smaller of the caller's remaining time and the stage's own budget, and
carries the request id, so one query can be followed through every service's log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from cir.captioner.v1 import captioner_pb2_grpc
from cir.encoder.v1 import encoder_pb2_grpc
from cir.reasoner.v1 import reasoner_pb2_grpc
from cir_common.errors import DeadlineExceeded


@dataclass(frozen=True)
class Budget:
    """The time left for one request, from the caller's deadline (or the server's default)."""

    deadline: float  # time.monotonic() value

    @classmethod
    def from_context(cls, context: grpc.aio.ServicerContext | None, default_s: float) -> Budget:
        remaining = context.time_remaining() if context is not None else None
        return cls(time.monotonic() + (default_s if remaining is None else remaining))

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, stage_budget_s: float | None = None) -> float:
        """Seconds for a downstream call; raises DEADLINE_EXCEEDED when nothing is left."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded("the request's deadline passed before all stages ran")
        return left if stage_budget_s is None else min(left, stage_budget_s)


def _channel(address: str, max_message_bytes: int) -> grpc.aio.Channel:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Several replicas behind one DNS name: spread calls instead of pinning one connection.
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
    ]
    return grpc.aio.insecure_channel(address, options=options)


class ModelServices:
    """Stubs for the three model services, on channels kept for the life of the retriever."""

    def __init__(self, encoder: str, captioner: str, reasoner: str, max_message_bytes: int) -> None:
        self._channels = [_channel(a, max_message_bytes) for a in (encoder, captioner, reasoner)]
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(self._channels[0])
        self.captioner = captioner_pb2_grpc.CaptionerServiceStub(self._channels[1])
        self.reasoner = reasoner_pb2_grpc.ReasonerServiceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
