"""Start and stop throwaway `redis-server` processes on loopback (the local suite and the tests).

The server runs in the foreground (`--daemonize no`) as our child, so it can be killed hard to simulate
an outage and is always reaped. Persistence is off: nothing is written outside its temporary folder.
With `tls` it speaks TLS only (its port is a `--tls-port`; clients are not asked for a certificate) and
with `password` it requires AUTH: its `url` is then rediss://:PASSWORD@127.0.0.1:PORT/0.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from cir_tools.child_server import ChildServer, start_on_a_port, wait_ready
from cir_tools.child_server import free_port as free_port  # the tests and the suite take it from here

INSTALL_HINT = (
    "redis-server is not on PATH; run scripts/install-dev.sh (it installs the redis-server package)"
)


class RedisStartError(RuntimeError):
    pass


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


@dataclass(frozen=True)
class RedisTls:
    """The server's certificate and key (PEM; for 127.0.0.1) and the CA that signed them."""

    cert_file: str
    key_file: str
    ca_file: str


def ping(port: int, timeout_s: float = 0.2, tls: RedisTls | None = None, password: str | None = None) -> bool:
    """True when a Redis on 127.0.0.1:`port` answers PING (inline command, no client library needed)."""
    return _ask(port, b"PING", timeout_s, tls, password).startswith(b"+PONG")


def server_pid(
    port: int, timeout_s: float = 0.5, tls: RedisTls | None = None, password: str | None = None
) -> int | None:
    """The process id the Redis on `port` reports, to tell our server from one that already held the port."""
    reply = _ask(port, b"INFO server", timeout_s, tls, password)
    for line in reply.decode("latin-1").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _ask(
    port: int, command: bytes, timeout_s: float, tls: RedisTls | None = None, password: str | None = None
) -> bytes:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as raw:
            s = raw
            if tls is not None:
                context = ssl.create_default_context(cafile=tls.ca_file)
                s = context.wrap_socket(raw, server_hostname="127.0.0.1")
            if password is not None:
                s.sendall(b"AUTH " + password.encode() + b"\r\n")
                if not s.recv(1024).startswith(b"+OK"):
                    return b""
            s.sendall(command + b"\r\n")
            return s.recv(65536)
    except OSError:
        return b""


@dataclass
class RedisProcess(ChildServer):
    log_name: ClassVar[str] = "redis.log"
    paused: bool = field(default=False, kw_only=True)
    tls: RedisTls | None = field(default=None, kw_only=True)
    password: str | None = field(default=None, kw_only=True, repr=False)

    @property
    def url(self) -> str:
        scheme = "redis" if self.tls is None else "rediss"
        auth = "" if self.password is None else f":{quote(self.password, safe='')}@"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

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


def start_redis(
    port: int | None = None,
    *,
    timeout_s: float = 10.0,
    tls: RedisTls | None = None,
    password: str | None = None,
) -> RedisProcess:
    """Start `redis-server` on 127.0.0.1 and wait until it answers PING.

    With no `port`, picks a free one and retries on another if it was taken in the meantime. With `tls` the
    port speaks TLS only; with `password` the server requires AUTH.
    """
    binary = redis_server_binary()
    if binary is None:
        raise RedisStartError(INSTALL_HINT)
    return start_on_a_port(
        lambda chosen: _start_once(binary, chosen, timeout_s, tls, password), port, RedisStartError
    )


def _start_once(
    binary: str, port: int, timeout_s: float, tls: RedisTls | None, password: str | None
) -> RedisProcess:
    workdir = Path(tempfile.mkdtemp(prefix=f"cir-redis-{port}-"))
    listen = ["--port", str(port)]
    if tls is not None:
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", tls.cert_file]
        listen += [
            "--tls-key-file",
            tls.key_file,
            "--tls-ca-cert-file",
            tls.ca_file,
            "--tls-auth-clients",
            "no",
        ]
    if password is not None:
        listen += ["--requirepass", password]
    args = [
        binary,
        *listen,
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
    server = RedisProcess(port=port, process=process, workdir=workdir, tls=tls, password=password)

    def ready() -> bool:
        if not ping(port, tls=tls, password=password):
            return False
        if server_pid(port, tls=tls, password=password) == process.pid:
            return True
        server.stop()
        raise RedisStartError(f"port {port} is already served by another Redis")

    name = f"redis-server on port {port}"
    return wait_ready(
        server, ready, name=name, what="answer PING", timeout_s=timeout_s, poll_s=0.02, error=RedisStartError
    )
