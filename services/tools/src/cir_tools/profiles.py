"""Profiles as the services read them: `check_profile` loads every service's settings from one.

A profile the tools write (the tiny pack's) is checked before it is handed out, so a misspelled or invalid
key fails where it is written, with the service's own ConfigError, instead of when a service starts.
"""

from __future__ import annotations

from pathlib import Path

from cir_common.config import ServiceSettings, load_settings
from cir_common.vocabulary import SERVICES, Service


def settings_classes() -> dict[Service, type[ServiceSettings]]:
    """Each service's settings class (imported here: the settings modules load no models)."""
    from cir_captioner.settings import CaptionerSettings
    from cir_encoder.settings import EncoderSettings
    from cir_reasoner.settings import ReasonerSettings
    from cir_retriever.settings import RetrieverSettings

    return {
        Service.RETRIEVER: RetrieverSettings,
        Service.ENCODER: EncoderSettings,
        Service.CAPTIONER: CaptionerSettings,
        Service.REASONER: ReasonerSettings,
    }


def check_profile(profile: Path) -> dict[Service, ServiceSettings]:
    """Every service's settings from `profile` alone (no environment); ConfigError on a bad key or value."""
    return {
        service: load_settings(
            cls,
            section=SERVICES[service].profile_section,
            env_prefix=SERVICES[service].env_prefix,
            profile=profile,
            environ={},
        )
        for service, cls in settings_classes().items()
    }
