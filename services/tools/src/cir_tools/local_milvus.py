"""Start and stop a throwaway Milvus engine (milvus-lite's server) on loopback: for the tests, and for
`cir serve --store milvus`, so that the distributed store can be tried on one machine.

milvus-lite 2.5.1 ships the Milvus C++ engine as a binary (`milvus_lite/lib/milvus`). We run that binary
ourselves as our direct child, the way `milvus_lite.server.Server` does (same arguments and library path), so
that it can be killed hard to simulate an outage and is always reaped; no wrapper process sits between (a
killed wrapper would orphan the engine). Readiness is a real gRPC call (Milvus' Connect), not an open port:
the engine accepts TCP connections before it serves. milvus-lite is a development dependency only; nothing
here imports pymilvus (cir-common is shared by every service).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

import grpc

from cir_tools.child_server import ChildServer, start_on_a_port, wait_ready
from cir_tools.child_server import free_port as free_port  # the tests take it from here

INSTALL_HINT = (
    "milvus-lite is not installed; run scripts/install-dev.sh (it installs milvus-lite==2.5.1, a development "
    "and test dependency)"
)
# milvus-lite's own rule for the database file name (`Server.__init__`).
DB_FILE = "milvus.db"
# What pymilvus calls first on a new connection; milvus-lite implements it (not GetVersion or CheckHealth).
_CONNECT = "/milvus.proto.milvus.MilvusService/Connect"


class MilvusStartError(RuntimeError):
    pass


def milvus_lite_binary() -> Path | None:
    """The engine binary of the installed milvus-lite, found without importing the package."""
    spec = importlib.util.find_spec("milvus_lite")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "lib" / "milvus"
    return binary if binary.is_file() else None


def ping(port: int, timeout_s: float = 1.0) -> bool:
    """True when a Milvus on 127.0.0.1:`port` answers a gRPC call (Connect; an empty request is valid)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = channel.unary_unary(_CONNECT, request_serializer=None, response_deserializer=None)
        call(b"", timeout=timeout_s)
        return True
    except grpc.RpcError as error:
        # Any status but these comes from a server that serves gRPC (one with auth says UNAUTHENTICATED).
        return error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        channel.close()


@dataclass
class MilvusProcess(ChildServer):
    # The folder holding the database file; stop() removes it only when it is the temporary workdir.
    data_dir: Path
    _lock: IO[str] | None = field(default=None, repr=False)
    log_name: ClassVar[str] = "milvus.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the database lock
            self._lock = None


def start_milvus(
    port: int | None = None, *, data_dir: Path | None = None, timeout_s: float = 60.0
) -> MilvusProcess:
    """Start milvus-lite's engine on 127.0.0.1 and wait until it answers a gRPC call.

    The database is `data_dir/milvus.db` (kept after stop) or lives in a temporary folder (removed by
    stop). With no `port`, picks a free one and retries on another if it was taken in the meantime.
    """
    binary = milvus_lite_binary()
    if binary is None:
        raise MilvusStartError(INSTALL_HINT)
    return start_on_a_port(
        lambda chosen: _start_once(binary, chosen, data_dir, timeout_s), port, MilvusStartError
    )


def _lock_database(data_dir: Path) -> IO[str]:
    """An exclusive lock beside the database: two engines on one file would corrupt it."""
    handle = open(data_dir / f".{DB_FILE}.cir-lock", "a")  # noqa: SIM115 (held until stop)
    try:
        # flock, not lockf: POSIX record locks never conflict within one process (tests start two engines).
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise MilvusStartError(f"{data_dir / DB_FILE} is in use by another Milvus engine") from None
    return handle


def _start_once(binary: Path, port: int, data_dir: Path | None, timeout_s: float) -> MilvusProcess:
    if ping(port, timeout_s=0.5):
        raise MilvusStartError(f"port {port} is already served by another Milvus")
    workdir = Path(tempfile.mkdtemp(prefix=f"cir-milvus-{port}-"))
    # Absolute: the engine runs in the data folder, where a relative path would point elsewhere.
    data = (data_dir if data_dir is not None else workdir).resolve()
    try:
        data.mkdir(parents=True, exist_ok=True)
        lock = _lock_database(data)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    env = dict(os.environ)
    # The engine's shared libraries (knowhere, OpenBLAS) sit beside it; the log level keeps its stderr short.
    env["LD_LIBRARY_PATH"] = str(binary.parent) + (
        ":" + os.environ["LD_LIBRARY_PATH"] if os.environ.get("LD_LIBRARY_PATH") else ""
    )
    args = [str(binary), str(data / DB_FILE), f"127.0.0.1:{port}", os.environ.get("LOG_LEVEL", "ERROR")]
    with open(workdir / "milvus.log", "wb") as log:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=data, env=env
        )
    server = MilvusProcess(port=port, process=process, workdir=workdir, data_dir=data, _lock=lock)

    def ready() -> bool:
        if not ping(port):
            return False
        # Our engine answers only while it is alive: if it died because the port was taken, wait_ready
        # reports it; a check after the answer tells ours from a server that held the port.
        time.sleep(0.05)
        return server.alive

    name = f"the Milvus engine on port {port}"
    return wait_ready(
        server, ready, name=name, what="answer", timeout_s=timeout_s, poll_s=0.05, error=MilvusStartError
    )
