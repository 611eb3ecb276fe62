"""Fixtures of the retriever tests: a real Milvus engine (milvus-lite's server) for the milvus store."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from cir_tools.local_milvus import INSTALL_HINT, MilvusProcess, milvus_lite_binary
from cir_tools.local_milvus import start_milvus as _start_milvus


def _require_milvus_lite() -> None:
    # Fail, not skip: a skipped store test looks like a pass and hides a broken dev setup.
    if milvus_lite_binary() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[MilvusProcess]:
    """One Milvus engine on a free loopback port for the whole session (`.uri`, `.port`).

    Shared: tests must use their own store prefix (`milvus_prefix`), and must not stop it. Use
    `start_milvus` for one a test may kill.
    """
    _require_milvus_lite()
    server = _start_milvus()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def milvus_prefix() -> str:
    """A store prefix of this test's own: its catalog and collections never meet another test's."""
    return "t" + secrets.token_hex(6)


@pytest.fixture
def start_milvus() -> Iterator[Callable[..., MilvusProcess]]:
    """Factory for private Milvus engines: `start_milvus(port=None, data_dir=None)`; all stopped after."""
    _require_milvus_lite()
    started: list[MilvusProcess] = []

    def start(port: int | None = None, **kwargs: object) -> MilvusProcess:
        server = _start_milvus(port, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
