"""The README's configuration reference matches the settings the services actually read."""

from __future__ import annotations

import re
from pathlib import Path

from cir_captioner.settings import ENV_PREFIX as CAPTIONER_PREFIX
from cir_captioner.settings import CaptionerSettings
from cir_client.retriever import CLIENT_ENVIRONMENT
from cir_common.config import ServiceSettings, settings_reference
from cir_encoder.settings import ENV_PREFIX as ENCODER_PREFIX
from cir_encoder.settings import EncoderSettings
from cir_reasoner.settings import ENV_PREFIX as REASONER_PREFIX
from cir_reasoner.settings import ReasonerSettings
from cir_retriever.settings import ENV_PREFIX as RETRIEVER_PREFIX
from cir_retriever.settings import RetrieverSettings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SERVICES = [
    (EncoderSettings, ENCODER_PREFIX),
    (CaptionerSettings, CAPTIONER_PREFIX),
    (ReasonerSettings, REASONER_PREFIX),
    (RetrieverSettings, RETRIEVER_PREFIX),
]
COMMON = {name.removeprefix("X_") for name, _, _ in settings_reference(ServiceSettings, "X_")}


def _documented_variables() -> set[str]:
    return set(re.findall(r"`(CIR_[A-Z_<>]+)`", README))


def test_every_setting_is_documented():
    documented = _documented_variables()
    for cls, prefix in SERVICES:
        for name, _, _ in settings_reference(cls, prefix):
            suffix = name.removeprefix(prefix)
            assert name in documented or (suffix in COMMON and f"CIR_<SERVICE>_{suffix}" in documented), (
                f"{name} is missing from the README"
            )


def test_documented_settings_exist():
    real = {name for cls, prefix in SERVICES for name, _, _ in settings_reference(cls, prefix)}
    real |= {f"CIR_<SERVICE>_{suffix}" for suffix in COMMON}
    real |= {"CIR_PROFILE", "CIR_<SERVICE>_PROFILE", "CIR_<SERVICE>_<SETTING>"}
    real |= set(CLIENT_ENVIRONMENT)  # read by the clients (cir, cir_client, clients/go, clients/node)
    stale = _documented_variables() - real
    assert not stale, f"README documents settings the code does not read: {sorted(stale)}"
