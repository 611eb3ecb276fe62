"""Start and stop throwaway `redis-server` processes on loopback (the local suite and the tests).

The server runs in the foreground (`--daemonize no`) as our child, so it can be killed hard to simulate
an outage and is always reaped. Persistence is off: nothing is written outside its temporary folder.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from cir_tools.child_server import ChildServer, start_on_a_port, wait_ready
from cir_tools.child_server import free_port as free_port  # the tests and the suite take it from here

INSTALL_HINT = (
    "redis-server is not on PATH; run scripts/install-dev.sh (it installs the redis-server package)"
)


class RedisStartError(RuntimeError):
    pass


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def ping(port: int, timeout_s: float = 0.2) -> bool:
    """True when a Redis on 127.0.0.1:`port` answers PING (inline command, no client library needed)."""
    return _ask(port, b"PING", timeout_s).startswith(b"+PONG")


def server_pid(port: int, timeout_s: float = 0.5) -> int | None:
    """The process id the Redis on `port` reports, to tell our server from one that already held the port."""
    reply = _ask(port, b"INFO server", timeout_s)
    for line in reply.decode("latin-1").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _ask(port: int, command: bytes, timeout_s: float) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(command + b"\r\n")
            return s.recv(65536)
    except OSError:
        return b""


@dataclass
class RedisProcess(ChildServer):
    log_name: ClassVar[str] = "redis.log"
    paused: bool = field(default=False, kw_only=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """Simulate a hung server (SIGSTOP): the kernel still accepts connections, nothing ever answers."""
        if self.alive:
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`: the server answers again, with its data intact."""
        if self.paused and self.alive:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        # A stopped process would not act on SIGTERM until continued: the stop would wait out its grace.
        self.resume()
        super().stop()


def start_redis(port: int | None = None, *, timeout_s: float = 10.0) -> RedisProcess:
    """Start `redis-server` on 127.0.0.1 and wait until it answers PING.

    With no `port`, picks a free one and retries on another if it was taken in the meantime.
    """
    binary = redis_server_binary()
    if binary is None:
        raise RedisStartError(INSTALL_HINT)
    return start_on_a_port(lambda chosen: _start_once(binary, chosen, timeout_s), port, RedisStartError)


def _start_once(binary: str, port: int, timeout_s: float) -> RedisProcess:
    workdir = Path(tempfile.mkdtemp(prefix=f"cir-redis-{port}-"))
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / "redis.log"),
    ]
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    server = RedisProcess(port=port, process=process, workdir=workdir)

    def ready() -> bool:
        if not ping(port):
            return False
        if server_pid(port) == process.pid:
            return True
        server.stop()
        raise RedisStartError(f"port {port} is already served by another Redis")

    name = f"redis-server on port {port}"
    return wait_ready(
        server, ready, name=name, what="answer PING", timeout_s=timeout_s, poll_s=0.02, error=RedisStartError
    )
