"""Encoder fixtures: the tiny CLIP loaded through the production loader, and the encoder settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cir_common.config import load_settings
from cir_encoder.clip_loading import LoadedClip, load_clip
from cir_encoder.settings import ENV_PREFIX, SECTION, EncoderSettings


def tiny_encoder_settings(profile: Path, **overrides: object) -> EncoderSettings:
    settings = load_settings(
        EncoderSettings, section=SECTION, env_prefix=ENV_PREFIX, profile=profile, environ={}
    )
    for name, value in overrides.items():
        setattr(settings, name, value)
    return settings


@pytest.fixture(scope="session")
def tiny_clip(tiny_pack: Path) -> LoadedClip:
    settings = tiny_encoder_settings(tiny_pack)
    return load_clip(settings.clip_model, settings.clip_pretrained, settings.clip_config_dir, "cpu", "fp32")
