"""A server a test or `cir serve` starts on loopback (Redis, a Milvus engine): start, log, crash, stop.

`start_on_a_port` and `wait_ready` are the start-up both servers share: a free port (with retries when another
process takes it first), then a wait until the server answers, which fails with its log when it exits first.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ChildServer:
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path  # its logs (and data, unless kept elsewhere); removed by stop()
    _stopped: bool = field(default=False, repr=False, kw_only=True)
    log_name: ClassVar[str] = "server.log"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        path = self.workdir / self.log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """Simulate a crash: SIGKILL, so clients see connections drop with no goodbye."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Terminate (SIGTERM, then SIGKILL after 10 s), reap, and remove the working folder. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.alive:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
        finally:
            self._release()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _release(self) -> None:
        """What a subclass holds beside the process (e.g. a database lock), freed once it has stopped."""


ServerT = TypeVar("ServerT", bound=ChildServer)


def start_on_a_port(
    start_once: Callable[[int], ServerT], port: int | None, error: type[Exception]
) -> ServerT:
    """`start_once(port)`; with no `port`, on a free one, retried twice on another if it was taken meanwhile.

    `start_once` raises `error` when the server did not start; the last one's message is raised again.
    """
    attempts = 1 if port is not None else 3
    last_error = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        try:
            return start_once(chosen)
        except error as exc:
            last_error = str(exc)
    raise error(last_error)


def wait_ready(
    server: ServerT,
    ready: Callable[[], bool],
    *,
    name: str,
    what: str,
    timeout_s: float,
    poll_s: float,
    error: type[Exception],
) -> ServerT:
    """Polls `ready()` until it is true; `error` with the server's log (and the server stopped) when the
    process exits first or `timeout_s` passes. `name` and `what` word the messages: "NAME did not WHAT"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive:
            log = server.log()
            server.stop()
            raise error(f"{name} exited with {server.process.returncode}:\n{log}")
        if ready():
            return server
        time.sleep(poll_s)
    log = server.log()
    server.stop()
    raise error(f"{name} did not {what} within {timeout_s} s:\n{log}")
