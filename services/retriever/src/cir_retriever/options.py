"""From a search's preset, weight overrides and variant choices to validated `Options` (no protos here)."""

from __future__ import annotations

from dataclasses import dataclass

from cir_common.errors import InvalidArgument
from cir_common.vocabulary import CaptionSelection, EditMode
from cir_retriever.fusion import ScoreFunction
from cir_retriever.presets import PRESETS, Preset
from cir_retriever.strategies import InstructCirVariant, Options, WeiMoCirVariant


@dataclass(frozen=True)
class WeightOverrides:
    """A caller's weights; None = the preset's value."""

    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    weimocir_a: float | None = None
    weimocir_b: float | None = None


@dataclass(frozen=True)
class VariantChoices:
    """A caller's variant choices; None / "" = the default (released code's choice, the preset's template)."""

    edit_mode: EditMode | None = None
    objects_caption_selection: CaptionSelection | None = None
    score: ScoreFunction | None = None
    weimocir_variant: WeiMoCirVariant | None = None
    edit_template: str = ""
    instructcir_variant: InstructCirVariant | None = None


def resolve_options(preset: Preset, weights: WeightOverrides, choices: VariantChoices) -> Options:
    """The preset's values with the caller's overrides; each weight in [0, 1] and alpha + beta <= 1."""
    values = PRESETS[preset]
    resolved: dict[str, float] = {}
    for name in ("alpha", "beta", "gamma", "weimocir_a", "weimocir_b"):
        override = getattr(weights, name)
        value = float(getattr(values, name) if override is None else override)
        if not 0.0 <= value <= 1.0:  # NaN fails this too
            raise InvalidArgument(f"weights.{name} = {value:g} is outside [0, 1]")
        resolved[name] = value
    if resolved["alpha"] + resolved["beta"] > 1.0 + 1e-6:
        raise InvalidArgument(
            f"weights.alpha + weights.beta = {resolved['alpha'] + resolved['beta']:g} exceeds 1 "
            "(the image weight 1 - alpha - beta would be negative)"
        )
    return Options(
        alpha=resolved["alpha"],
        beta=resolved["beta"],
        gamma=resolved["gamma"],
        weimocir_a=resolved["weimocir_a"],
        weimocir_b=resolved["weimocir_b"],
        caption_features_renormalized=values.caption_features_renormalized,
        edit_mode=choices.edit_mode or EditMode.PER_CAPTION,
        objects_caption_selection=choices.objects_caption_selection or CaptionSelection.ALL_JOINED,
        score=choices.score or ScoreFunction.DOT,
        weimocir_variant=choices.weimocir_variant or WeiMoCirVariant.CODED,
        edit_template=choices.edit_template or values.edit_template,
        # InstructCIR has no weights: every preset runs it alike, in the plain variant unless asked.
        instructcir_variant=choices.instructcir_variant or InstructCirVariant.PLAIN,
    )
