"""A server process a test or `cir serve` started on loopback (Redis, a Milvus engine): log, crash, stop."""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar


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
