"""The whole suite on one machine: Redis plus the four services, each its own process on loopback.

Used by `cir serve`, `cir demo` and the end-to-end tests. Every process started here is stopped
by `stop()` (SIGTERM, then SIGKILL after a grace period).

Start-up waits for every service to be SERVING, within a limit (`CIR_STARTUP_TIMEOUT_S`, or the caller's
`timeout_s`), and says every 15 s which services are still starting and for how long: loading models
can take minutes on a loaded machine, and a silent wait looks like a hang. A service whose environment turns
TLS on (`extra_env`: CIR_<SERVICE>_TLS_CERT_FILE ...) is probed over TLS, as the images' healthcheck does
(`cir_common.tls.health_probe_tls`: its certificate checked against CIR_TLS_CA_FILE or its client CA, and
with mTLS its own certificate presented).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cir_common import vocabulary
from cir_common.tls import channel_credentials, health_probe_tls
from cir_common.vocabulary import PROFILE_ENV, RETRIEVER, Service, ServiceIdentity
from cir_tools.local_milvus import MilvusProcess, start_milvus
from cir_tools.local_redis import RedisProcess, RedisTls, free_port, redis_server_binary, start_redis
from cir_tools.proc_stat import process_cpu_s, session_cpu_s

log = logging.getLogger(__name__)

# The model services start first, then the retriever that calls them.
MODEL_SERVICES = (Service.ENCODER, Service.CAPTIONER, Service.REASONER)
START_ORDER = (*MODEL_SERVICES, Service.RETRIEVER)


def _identity(name: str) -> ServiceIdentity:
    return vocabulary.SERVICES[Service(name)]


# Views of cir_common.vocabulary by service name. The services' own default ports (their settings), used by
# `cir serve` so the CLI defaults reach them:
DEFAULT_PORTS = {str(name): identity.default_port for name, identity in vocabulary.SERVICES.items()}
# In START_ORDER, (python module, gRPC service name, environment prefix):
SERVICES = {
    str(name): (_identity(name).package, _identity(name).grpc_name, _identity(name).env_prefix)
    for name in START_ORDER
}


# The start-up limit's setting (seconds) and its default: generous, because the default is for a loaded
# 2-core machine loading four models (the vLLM engine alone took minutes there before it ran eager); the
# progress lines say what is still starting meanwhile.
STARTUP_TIMEOUT_ENV = "CIR_STARTUP_TIMEOUT_S"
DEFAULT_STARTUP_TIMEOUT_S = 600.0
PROGRESS_EVERY_S = 15.0


class SuiteError(RuntimeError):
    pass


def startup_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """The start-up limit in seconds: CIR_STARTUP_TIMEOUT_S when set, else DEFAULT_STARTUP_TIMEOUT_S."""
    raw = (os.environ if environ is None else environ).get(STARTUP_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_STARTUP_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SuiteError(
            f"{STARTUP_TIMEOUT_ENV}={raw!r}: set the start-up limit as a positive number of seconds"
        )
    return value


def _print_progress(line: str) -> None:
    print(line, flush=True)


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    # When the process was started (time.monotonic()): progress lines say how long it has been starting.
    started: float = field(default_factory=time.monotonic)

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
    # Redis over TLS (the services get a rediss:// URL and the CA) and / or with a password.
    redis_tls: RedisTls | None = None
    redis_password: str | None = None
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    redis: RedisProcess | None = None
    milvus: MilvusProcess | None = None
    ports: dict[str, int] = field(default_factory=dict)
    # Receives the start-up progress lines (None: quiet).
    progress: Callable[[str], None] | None = _print_progress

    @property
    def retriever_address(self) -> str:
        return self.processes[RETRIEVER.service].address

    def start(
        self,
        timeout_s: float | None = None,
        names: tuple[str, ...] = tuple(SERVICES),
        ports: dict[str, int] | None = None,
    ) -> None:
        """Starts Redis and the services (on `ports`, or free ones) and waits until all are SERVING.

        `timeout_s` None: the limit is CIR_STARTUP_TIMEOUT_S (default DEFAULT_STARTUP_TIMEOUT_S).
        """
        # Read first: a malformed setting fails before anything is started.
        limit = startup_timeout_s() if timeout_s is None else timeout_s
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.use_redis and redis_server_binary() is not None:
                self.redis = start_redis(tls=self.redis_tls, password=self.redis_password)
            if self.store == "milvus":
                self.milvus = start_milvus(data_dir=self.workdir / "milvus")
            self.ports = {name: (ports or {}).get(name) or free_port() for name in SERVICES}
            for name in names:
                self.start_service(name)
            self.wait_serving(limit)
        except BaseException:
            self.stop()
            raise

    def environment(self, name: str) -> dict[str, str]:
        ports = self.ports
        prefix = _identity(name).env_prefix
        env = {**os.environ, PROFILE_ENV: str(self.profile), **self.extra_env}
        env[f"{prefix}PORT"] = str(ports[name])
        env[f"{prefix}HOST"] = "127.0.0.1"
        if self.redis is not None:
            env[f"{prefix}CACHE_URL"] = self.redis.url
            if self.redis.tls is not None:
                env[f"{prefix}CACHE_TLS_CA_FILE"] = self.redis.tls.ca_file
        if name == Service.RETRIEVER:
            for other in MODEL_SERVICES:
                env[f"{prefix}{other.upper()}_ADDRESS"] = f"127.0.0.1:{ports[other]}"
            env.setdefault(f"{prefix}STORE_DIR", str(self.workdir / "collections"))
            env[f"{prefix}STORE_BACKEND"] = self.store
            if self.milvus is not None:
                env[f"{prefix}MILVUS_URI"] = self.milvus.uri
        if name == Service.REASONER:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        return env

    def start_service(self, name: str) -> ServiceProcess:
        """Starts (or restarts) one service on its port; `wait_serving` waits for it."""
        module = _identity(name).package
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

    def wait_serving(
        self, timeout_s: float | None = None, progress_every_s: float = PROGRESS_EVERY_S
    ) -> None:
        """Waits until every started service is SERVING; SuiteError when one exits or the limit passes.

        `timeout_s` None: CIR_STARTUP_TIMEOUT_S. Every `progress_every_s` a progress line names the
        services still starting and how long each has been at it.
        """
        limit = startup_timeout_s() if timeout_s is None else timeout_s
        began = time.monotonic()
        deadline = began + limit
        next_report = began + progress_every_s
        pending = dict(self.processes)
        channels: dict[str, grpc.Channel] = {}
        try:
            for name, service in pending.items():
                channels[name] = self._probe_channel(name, service.address)
            while True:
                for name, service in list(pending.items()):
                    if service.process.poll() is not None:
                        code = service.process.returncode
                        raise SuiteError(f"{name} exited with code {code}; its log:\n{service.log_tail()}")
                    if _serving(channels[name], _identity(name).grpc_name):
                        del pending[name]
                if not pending:
                    return
                now = time.monotonic()
                # Reported before the deadline is checked: a wait that fails has said what it waited for.
                if now >= next_report:
                    self._report(pending, now - began, limit)
                    next_report = now + progress_every_s
                if now > deadline:
                    raise SuiteError(_not_serving(pending, limit))
                time.sleep(0.2)
        finally:
            for channel in channels.values():
                channel.close()

    def _probe_channel(self, name: str, address: str) -> grpc.Channel:
        """A channel for health probes: over TLS when the service's environment turns TLS on."""
        # The TLS settings are the caller's (extra_env or this process's environment), never ones the suite
        # derives, so a suite assembled without start() (ports unknown) probes the same way.
        tls = health_probe_tls({**os.environ, **self.extra_env}, _identity(name).env_prefix)
        if tls is None:
            return grpc.insecure_channel(address)
        return grpc.secure_channel(address, channel_credentials(tls.load()))

    def _report(self, pending: Mapping[str, ServiceProcess], waited_s: float, limit_s: float) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        starting = ", ".join(f"{name} ({now - service.started:.0f} s)" for name, service in pending.items())
        self.progress(
            f"still starting after {waited_s:.0f} s: {starting}; limit {limit_s:g} s ({STARTUP_TIMEOUT_ENV})"
        )

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each running service (with the processes it started) and by Redis."""
        used = {name: session_cpu_s(service.process.pid) for name, service in self.processes.items()}
        if self.redis is not None:
            used["redis"] = process_cpu_s(self.redis.process.pid)
        return used

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
            for name in (Service.RETRIEVER, *MODEL_SERVICES):
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


def _serving(channel: grpc.Channel, grpc_name: str) -> bool:
    try:
        request = health_pb2.HealthCheckRequest(service=grpc_name)
        status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=1).status
    except grpc.RpcError:
        return False  # not listening yet, or busy loading: still starting
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def _not_serving(pending: Mapping[str, ServiceProcess], limit_s: float) -> str:
    names = ", ".join(pending)
    verb = "was" if len(pending) == 1 else "were"
    logs = "".join(
        f"\n--- {name} log (last lines) ---\n{service.log_tail()}" for name, service in pending.items()
    )
    return (
        f"{names} {verb} not SERVING after {limit_s:g} s, the start-up limit ({STARTUP_TIMEOUT_ENV}; "
        f"raise it on a slow or loaded machine){logs}"
    )


@contextlib.contextmanager
def local_suite_address(profile: Path | None, workdir: Path, echo: Callable[[str], None]) -> Iterator[str]:
    """Run a local suite for the duration (the tiny pack when `profile` is None); yield the retriever address.

    What `cir eval` runs without --address (cir_evaluation.runner.SuiteStarter)."""
    from cir_tools.packs.tiny import build_tiny_pack

    if profile is None:
        echo("no --address and no profile: starting the suite with the tiny model pack (random weights)")
        profile = build_tiny_pack(workdir / "tiny-pack", echo=None)
    suite = LocalSuite(profile=profile, workdir=workdir / "suite")
    echo(f"starting the suite with {profile} (logs in {workdir / 'suite'}) ...")
    suite.start()
    try:
        yield suite.retriever_address
    finally:
        suite.stop()
