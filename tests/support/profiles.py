"""Service settings read from the tiny pack's profile, as the services themselves read them."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from cir_common.config import ServiceSettings, load_settings

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def settings_from_profile(
    cls: type[SettingsT], section: str, env_prefix: str, profile: Path, **overrides: object
) -> SettingsT:
    settings = load_settings(cls, section=section, env_prefix=env_prefix, profile=profile, environ={})
    for name, value in overrides.items():
        if not hasattr(settings, name):
            raise AttributeError(f"{cls.__name__} has no setting {name!r}")
        setattr(settings, name, value)
    return settings
