"""Captioner fixtures: the service over real gRPC with the tiny BLIP-2, its `generate` spied on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from captioner_support import TEST_LIMITS, RunningCaptioner, captioner_settings, start_captioner

from cir_common.cache import MemoryCache


@pytest.fixture(scope="module")
def captioner(tiny_pack: Path) -> Iterator[RunningCaptioner]:
    settings = captioner_settings(tiny_pack, port=0, **TEST_LIMITS)
    running = start_captioner(settings, MemoryCache(64 * 1024 * 1024))
    yield running
    running.server.stop()
