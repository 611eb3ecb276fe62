"""Helpers of the captioner tests: settings from the tiny pack, a spy on `generate`, a server on loopback."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.profiles import settings_from_profile
from support.server_thread import ServerThread

from cir.captioner.v1 import captioner_pb2_grpc
from cir_captioner.__main__ import SERVICE_NAME
from cir_captioner.service import CaptionerServicer
from cir_captioner.settings import ENV_PREFIX, SECTION, CaptionerSettings
from cir_common.cache import Cache

# Limits low enough that tests can cross them with small requests.
TEST_LIMITS: dict[str, Any] = {
    "max_images_per_request": 8,
    "max_num_captions": 20,
    "max_new_tokens": 60,
    "max_num_beams": 16,
    "max_prompt_chars": 256,
    # Long enough that callers started together on a loaded 2-core machine still meet in one batch.
    "batch_window_ms": 50.0,
}


def captioner_settings(profile: Path, **overrides: Any) -> CaptionerSettings:
    return settings_from_profile(CaptionerSettings, SECTION, ENV_PREFIX, profile, **overrides)


@dataclass(frozen=True)
class GenerateCall:
    kwargs: dict[str, Any]  # every non-tensor argument, exactly as generate received it
    input_ids: torch.Tensor
    batch_size: int
    output: torch.Tensor

    @property
    def new_tokens(self) -> int:
        return self.output.shape[1] - self.input_ids.shape[1]


class GenerateSpy:
    """Stands in for `model.generate`: records each call, then runs the real generate."""

    def __init__(self, generate: Any) -> None:
        self._generate = generate
        self._lock = threading.Lock()
        self.calls: list[GenerateCall] = []

    def __call__(self, **kwargs: Any) -> torch.Tensor:
        output = self._generate(**kwargs)
        call = GenerateCall(
            kwargs={k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)},
            input_ids=kwargs["input_ids"].clone(),
            batch_size=kwargs["pixel_values"].shape[0],
            output=output.clone(),
        )
        with self._lock:
            self.calls.append(call)
        return output

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.calls)


@dataclass
class RunningCaptioner:
    server: ServerThread
    servicer: CaptionerServicer
    stub: captioner_pb2_grpc.CaptionerServiceStub
    spy: GenerateSpy
    health_transitions: tuple[int, int]


def start_captioner(settings: CaptionerSettings, cache: Cache) -> RunningCaptioner:
    servicer = CaptionerServicer(settings, cache=cache)

    def register(host: Any) -> Any:
        captioner_pb2_grpc.add_CaptionerServiceServicer_to_server(servicer, host.server)
        return servicer.load

    server = ServerThread(SERVICE_NAME, settings, register)
    health = health_pb2_grpc.HealthStub(server.channel())
    before = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status
    server.load_and_serve()
    after = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status
    model = servicer.core.engine.blip2.model
    spy = GenerateSpy(model.generate)
    model.generate = spy  # instance attribute: the engine's calls go through the spy
    return RunningCaptioner(
        server=server,
        servicer=servicer,
        stub=captioner_pb2_grpc.CaptionerServiceStub(server.channel()),
        spy=spy,
        health_transitions=(before, after),
    )
