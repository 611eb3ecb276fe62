"""The whole suite on one machine: Redis plus the four services, each its own process on loopback.

Used by `cir serve`, `cir demo` and the end-to-end tests. Every process started here is stopped
by `stop()` (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cir_common.local_milvus import MilvusProcess, start_milvus
from cir_common.local_redis import RedisProcess, free_port, redis_server_binary, start_redis

log = logging.getLogger(__name__)

# The services' own default ports (their settings), used by `cir serve` so the CLI defaults reach them.
DEFAULT_PORTS = {"retriever": 50050, "encoder": 50051, "captioner": 50052, "reasoner": 50053}

SERVICES = {
    # name: (python module, gRPC service name, environment prefix)
    "encoder": ("cir_encoder", "cir.encoder.v1.EncoderService", "CIR_ENCODER_"),
    "captioner": ("cir_captioner", "cir.captioner.v1.CaptionerService", "CIR_CAPTIONER_"),
    "reasoner": ("cir_reasoner", "cir.reasoner.v1.ReasonerService", "CIR_REASONER_"),
    "retriever": ("cir_retriever", "cir.retriever.v1.RetrieverService", "CIR_RETRIEVER_"),
}


class SuiteError(RuntimeError):
    pass


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalSuite:
    """Start with `start()`; `retriever_address` is the public entry point."""

    profile: Path
    workdir: Path
    use_redis: bool = True
    # The retriever's gallery store: "local" (files under workdir) or "milvus" (a local Milvus engine is
    # started, with its database under workdir, and the retriever keeps no state of its own).
    store: str = "local"
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    redis: RedisProcess | None = None
    milvus: MilvusProcess | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def retriever_address(self) -> str:
        return self.processes["retriever"].address

    def start(
        self,
        timeout_s: float = 300.0,
        names: tuple[str, ...] = tuple(SERVICES),
        ports: dict[str, int] | None = None,
    ) -> None:
        """Starts Redis and the services (on `ports`, or free ones) and waits until all are SERVING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.use_redis and redis_server_binary() is not None:
                self.redis = start_redis()
            if self.store == "milvus":
                self.milvus = start_milvus(data_dir=self.workdir / "milvus")
            self.ports = {name: (ports or {}).get(name) or free_port() for name in SERVICES}
            for name in names:
                self.start_service(name)
            self.wait_serving(timeout_s)
        except BaseException:
            self.stop()
            raise

    def environment(self, name: str) -> dict[str, str]:
        ports = self.ports
        _, _, prefix = SERVICES[name]
        env = {**os.environ, "CIR_PROFILE": str(self.profile), **self.extra_env}
        env[f"{prefix}PORT"] = str(ports[name])
        env[f"{prefix}HOST"] = "127.0.0.1"
        if self.redis is not None:
            env[f"{prefix}CACHE_URL"] = self.redis.url
        if name == "retriever":
            for other in ("encoder", "captioner", "reasoner"):
                env[f"CIR_RETRIEVER_{other.upper()}_ADDRESS"] = f"127.0.0.1:{ports[other]}"
            env.setdefault("CIR_RETRIEVER_STORE_DIR", str(self.workdir / "collections"))
            env["CIR_RETRIEVER_STORE_BACKEND"] = self.store
            if self.milvus is not None:
                env["CIR_RETRIEVER_MILVUS_URI"] = self.milvus.uri
        if name == "reasoner":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        return env

    def start_service(self, name: str) -> ServiceProcess:
        """Starts (or restarts) one service on its port; `wait_serving` waits for it."""
        module, _, _ = SERVICES[name]
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module],
                env=self.environment(name),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop the children in order
            )
        service = ServiceProcess(name, self.ports[name], process, log_path)
        self.processes[name] = service
        return service

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for name, service in self.processes.items():
            _, grpc_name, _ = SERVICES[name]
            with grpc.insecure_channel(service.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while True:
                    if service.process.poll() is not None:
                        code = service.process.returncode
                        raise SuiteError(f"{name} exited with code {code}; its log:\n{service.log_tail()}")
                    try:
                        status = stub.Check(
                            health_pb2.HealthCheckRequest(service=grpc_name), timeout=1
                        ).status
                        if status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise SuiteError(
                            f"{name} was not SERVING after {timeout_s:.0f} s; its log:\n{service.log_tail()}"
                        )
                    time.sleep(0.2)

    def stop_service(self, name: str, grace_s: float = 30.0) -> None:
        """SIGTERM (the service drains and unloads), then SIGKILL to its whole process group."""
        service = self.processes.pop(name, None)
        if service is None:
            return
        try:
            service.process.send_signal(signal.SIGTERM)
            service.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            # Whatever the service started (e.g. engine worker processes) goes with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.process.wait(timeout=10)

    def kill_service(self, name: str) -> None:
        """Simulates a crash: SIGKILL to the service and everything it started."""
        service = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait(timeout=10)

    def stop(self) -> None:
        """Stops everything, each step even when an earlier one failed."""
        try:
            # The retriever first: it drains its in-flight searches while the model services still answer.
            for name in ("retriever", "encoder", "captioner", "reasoner"):
                try:
                    self.stop_service(name)
                except Exception:
                    log.exception("could not stop %s", name)
        finally:
            if self.redis is not None:
                self.redis.stop()
                self.redis = None
            if self.milvus is not None:
                self.milvus.stop()
                self.milvus = None
