"""Fixtures for the model-loading tests. `tiny_pack` (the session's pack, built through `build_tiny_pack`)
comes from tests/conftest.py; this adds its parsed profile."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_profile(tiny_pack: Path) -> dict[str, Any]:
    with tiny_pack.open("rb") as handle:
        return tomllib.load(handle)
