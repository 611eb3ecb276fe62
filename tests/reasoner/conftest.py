"""Reasoner fixtures shared by the test modules of this folder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def vllm_cpu_env() -> Iterator[None]:
    """1 GiB of KV cache per engine: vLLM's CPU default reserves a large share of the machine's memory."""
    previous = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    yield
    if previous is None:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    else:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = previous
