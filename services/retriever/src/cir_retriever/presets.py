"""Published weights and variant choices per preset (method.md 3.4, 4.1), as data."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Preset(StrEnum):
    CIRCO = "circo"
    CIRR = "cirr"
    FASHIONIQ = "fashioniq"


class LdreForm(StrEnum):
    """How LDRE combines its per-caption edits."""

    MEAN = "mean"  # the mean of the edited captions' features (what the service computes)
    WEIGHTED = "weighted"  # adaptive slot weights (an evaluation-time option)


@dataclass(frozen=True)
class PresetValues:
    alpha: float
    beta: float
    gamma: float
    caption_features_renormalized: bool
    edit_template: str
    # LDRE: CIRCO uses adaptive slot weights (an evaluation-time option); the service uses the mean form.
    ldre_form: LdreForm
    weimocir_a: float = 0.8
    weimocir_b: float = 0.1


PRESETS: dict[Preset, PresetValues] = {
    Preset.CIRCO: PresetValues(0.6, 0.4, 0.2, False, "edit_structural", LdreForm.WEIGHTED),
    Preset.CIRR: PresetValues(0.6, 0.4, 0.2, False, "edit_contextual", LdreForm.MEAN),
    Preset.FASHIONIQ: PresetValues(0.2, 0.6, 0.1, True, "edit_structural_fashion", LdreForm.MEAN),
}

# Captions per image WeiMoCIR uses (R); the captioner's first R captions stand in for the MLLM's.
WEIMOCIR_SLOTS = 3
