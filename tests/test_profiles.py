"""Every shipped profile is read by every service without an unknown or malformed setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from cir_captioner.settings import CaptionerSettings
from cir_common.config import load_settings
from cir_encoder.settings import EncoderSettings
from cir_reasoner.settings import ReasonerSettings
from cir_retriever.settings import RetrieverSettings

PROFILES = sorted((Path(__file__).resolve().parents[1] / "deploy" / "profiles").glob("*.toml"))
SERVICES = [
    (EncoderSettings, "encoder", "CIR_ENCODER_"),
    (CaptionerSettings, "captioner", "CIR_CAPTIONER_"),
    (ReasonerSettings, "reasoner", "CIR_REASONER_"),
    (RetrieverSettings, "retriever", "CIR_RETRIEVER_"),
]


@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
@pytest.mark.parametrize(("cls", "section", "prefix"), SERVICES, ids=[s[1] for s in SERVICES])
def test_profile_loads(profile, cls, section, prefix):
    settings = load_settings(cls, section=section, env_prefix=prefix, profile=profile, environ={})
    assert isinstance(settings, cls)


def test_the_paper_profile_names_the_papers_models():
    paper = Path(__file__).resolve().parents[1] / "deploy" / "profiles" / "paper.toml"
    encoder = load_settings(EncoderSettings, section="encoder", env_prefix="X_", profile=paper, environ={})
    captioner = load_settings(
        CaptionerSettings, section="captioner", env_prefix="X_", profile=paper, environ={}
    )
    assert (encoder.clip_model, encoder.clip_pretrained, encoder.preprocessing) == (
        "ViT-L-14",
        "openai",
        "targetpad",
    )
    assert "lincir" in encoder.mapping_networks
    assert captioner.model == "Salesforce/blip2-opt-6.7b-coco" and captioner.default_variant == "beam_sample"
