"""Helpers of the reasoner tests: settings from the tiny pack, the service on loopback, a vLLM server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.profiles import settings_from_profile
from support.server_thread import ServerThread

from cir.reasoner.v1 import reasoner_pb2, reasoner_pb2_grpc
from cir_common.cache import Cache
from cir_reasoner.__main__ import SERVICE_NAME
from cir_reasoner.generation import LLMBackend
from cir_reasoner.service import ReasonerServicer
from cir_reasoner.settings import ENV_PREFIX, SECTION, ReasonerSettings
from cir_tools.local_redis import free_port

# Fifteen distinct captions of one image, as BLIP-2 writes them (method.md 2.3: N = 15).
CAPTIONS = [
    "a man riding a wave on top of a surfboard",
    "a surfer riding a large wave in the ocean",
    "a person on a surfboard in the water",
    "a man in a wetsuit surfing a big wave",
    "a surfer catches a wave near the beach",
    "a surfer in a black wetsuit riding a wave",
    "a man surfing on a sunny day",
    "a person riding a surf board on a wave",
    "a surfer is riding a wave in the sea",
    "a young man surfing in the ocean",
    "a surfer on a white surfboard",
    "a man balancing on a surfboard on a wave",
    "a surfer riding the crest of a wave",
    "a person surfing a small wave",
    "a surfer in the middle of a wave",
]
INSTRUCTION = "is at sunset and has a dog surfing next to him"
# A random model rarely stops by itself: short answers keep the tests fast.
SHORT = 8
SERVED_MODEL_NAME = "tiny-llm"

PARSED_OR_EMPTY = (reasoner_pb2.PARSE_OUTCOME_PARSED, reasoner_pb2.PARSE_OUTCOME_FALLBACK_EMPTY)


def reasoner_settings(profile: Path, **overrides: Any) -> ReasonerSettings:
    return settings_from_profile(ReasonerSettings, SECTION, ENV_PREFIX, profile, **overrides)


def sampling(max_tokens: int = SHORT, **fields: Any) -> reasoner_pb2.SamplingParameters:
    return reasoner_pb2.SamplingParameters(max_tokens=max_tokens, **fields)


def edit_request(captions: list[str] | None = None, **fields: Any) -> reasoner_pb2.EditCaptionsRequest:
    """An edit request for CAPTIONS and INSTRUCTION; short answers unless `sampling=None` (defaults)."""
    fields.setdefault("sampling", sampling())
    if fields["sampling"] is None:
        del fields["sampling"]
    fields.setdefault("instruction", INSTRUCTION)
    return reasoner_pb2.EditCaptionsRequest(captions=CAPTIONS if captions is None else captions, **fields)


@dataclass
class RunningReasoner:
    server: ServerThread
    servicer: ReasonerServicer
    channel: grpc.Channel
    stub: reasoner_pb2_grpc.ReasonerServiceStub
    health_transitions: tuple[int, int]

    @property
    def backend(self) -> Any:
        return self.servicer.core.backend

    def stop(self) -> None:
        self.channel.close()
        try:
            self.server.call(self.servicer.close(), timeout=60)
        finally:
            self.server.stop()


def start_reasoner(
    settings: ReasonerSettings, cache: Cache | None = None, backend: LLMBackend | None = None
) -> RunningReasoner:
    servicer = ReasonerServicer(settings, cache=cache, backend=backend)

    def register(host: Any) -> Any:
        reasoner_pb2_grpc.add_ReasonerServiceServicer_to_server(servicer, host.server)
        return servicer.load

    server = ServerThread(SERVICE_NAME, settings, register)
    channel = server.channel()
    health = health_pb2_grpc.HealthStub(channel)
    before = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status
    try:
        server.load_and_serve()
    except BaseException:
        channel.close()
        server.stop()
        raise
    after = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status
    return RunningReasoner(
        server, servicer, channel, reasoner_pb2_grpc.ReasonerServiceStub(channel), (before, after)
    )


def encode_threads(reasoner: RunningReasoner, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the thread of every prompt the backend's encoder tokenizes (chat template included)."""
    encoder = reasoner.backend.encoder
    threads: list[int] = []
    original = encoder.encode

    def encode(prompt: str) -> list[int]:
        threads.append(threading.get_ident())
        return original(prompt)

    monkeypatch.setattr(encoder, "encode", encode)
    return threads


def loop_thread(reasoner: RunningReasoner) -> int:
    """The thread of the server's event loop (where its handlers and health checks run)."""

    async def ident() -> int:
        return threading.get_ident()

    return int(reasoner.server.call(ident()))


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class OpenAIServer:
    """vLLM's OpenAI-compatible server on a free loopback port, in its own process group."""

    def __init__(self, model_dir: str, max_model_len: int, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model_dir,
            "--served-model-name", SERVED_MODEL_NAME,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-model-len", str(max_model_len),
            "--enforce-eager",
        ]  # fmt: skip
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its engine core joins this group, so stop() can reach it too
            )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the vLLM server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the vLLM server was not ready after {timeout_s:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, grace_s: float = 30.0) -> None:
        group = self.process.pid  # start_new_session: the group id is the server's pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        # The server stops its engine core on SIGTERM; anything of its group still alive is killed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
