"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cir_tools.local_redis import INSTALL_HINT, RedisProcess, redis_server_binary
from cir_tools.local_redis import start_redis as _start_redis


def _require_redis_server() -> None:
    # Fail, not skip: a skipped cache test looks like a pass and hides a broken dev setup.
    if redis_server_binary() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One real redis-server on a free loopback port for the whole session (`.url`, `.port`).

    Shared: tests must use their own keys, and must not stop or flush it. Use `start_redis` to kill one.
    """
    _require_redis_server()
    server = _start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_redis() -> Iterator[Callable[..., RedisProcess]]:
    """Factory for private redis-servers: `start_redis(port=None)`; all are stopped after the test."""
    _require_redis_server()
    started: list[RedisProcess] = []

    def start(port: int | None = None) -> RedisProcess:
        server = _start_redis(port)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the profile.toml of a tiny model pack, built once per session by `cir models tiny`'s code."""
    from cir_tools.packs.tiny import build_tiny_pack

    return build_tiny_pack(tmp_path_factory.mktemp("tiny-pack"), echo=None)


@pytest.fixture(scope="session")
def tiny_profile(tiny_pack: Path) -> dict[str, Any]:
    """The tiny pack's profile.toml, parsed."""
    with tiny_pack.open("rb") as handle:
        return tomllib.load(handle)
