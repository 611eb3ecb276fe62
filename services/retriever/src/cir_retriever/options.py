"""From a SearchRequest's strategy, preset, weights and variant choices to validated `Options`."""

from __future__ import annotations

from cir.captioner.v1 import captioner_pb2
from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2
from cir.retriever.v1 import retriever_pb2
from cir_common.errors import InvalidArgument
from cir_retriever.fusion import ScoreFunction
from cir_retriever.presets import PRESETS, Preset
from cir_retriever.strategies import CaptionSelection, EditMode, Options, StrategyName, WeiMoCirVariant

PREPROCESSING_TO_PROTO = {
    "targetpad": encoder_pb2.PREPROCESSING_TARGETPAD,
    "model_default": encoder_pb2.PREPROCESSING_MODEL_DEFAULT,
}
VARIANT_TO_PROTO = {
    "nucleus": captioner_pb2.DECODING_VARIANT_NUCLEUS,
    "beam_sample": captioner_pb2.DECODING_VARIANT_BEAM_SAMPLE,
}
STRATEGY_FROM_PROTO = {
    retriever_pb2.STRATEGY_IMAGE_ONLY: StrategyName.IMAGE_ONLY,
    retriever_pb2.STRATEGY_TEXT_ONLY: StrategyName.TEXT_ONLY,
    retriever_pb2.STRATEGY_CAPTIONING: StrategyName.CAPTIONING,
    retriever_pb2.STRATEGY_PIC2WORD: StrategyName.PIC2WORD,
    retriever_pb2.STRATEGY_SEARLE: StrategyName.SEARLE,
    retriever_pb2.STRATEGY_LINCIR: StrategyName.LINCIR,
    retriever_pb2.STRATEGY_CIREVL: StrategyName.CIREVL,
    retriever_pb2.STRATEGY_LDRE: StrategyName.LDRE,
    retriever_pb2.STRATEGY_WEIMOCIR: StrategyName.WEIMOCIR,
    retriever_pb2.STRATEGY_CVSI: StrategyName.CVSI,
}
STRATEGY_TO_PROTO = {name: value for value, name in STRATEGY_FROM_PROTO.items()}
PRESET_FROM_PROTO = {
    retriever_pb2.PRESET_CIRCO: Preset.CIRCO,
    retriever_pb2.PRESET_CIRR: Preset.CIRR,
    retriever_pb2.PRESET_FASHIONIQ: Preset.FASHIONIQ,
}
PRESET_TO_PROTO = {name: value for value, name in PRESET_FROM_PROTO.items()}
EDIT_MODE_FROM_PROTO = {
    common_pb2.EDIT_MODE_PER_CAPTION: EditMode.PER_CAPTION,
    common_pb2.EDIT_MODE_JOINED: EditMode.JOINED,
}
SELECTION_FROM_PROTO = {
    common_pb2.CAPTION_SELECTION_FIRST: CaptionSelection.FIRST,
    common_pb2.CAPTION_SELECTION_ALL_JOINED: CaptionSelection.ALL_JOINED,
}
SCORE_FROM_PROTO = {
    retriever_pb2.SCORE_FUNCTION_DOT: ScoreFunction.DOT,
    retriever_pb2.SCORE_FUNCTION_COSINE: ScoreFunction.COSINE,
}
WEIMOCIR_FROM_PROTO = {
    retriever_pb2.WEI_MO_CIR_VARIANT_CODED: WeiMoCirVariant.CODED,
    retriever_pb2.WEI_MO_CIR_VARIANT_PAPER: WeiMoCirVariant.PAPER,
}


def _enum(value: int, table: dict, field: str, default: object) -> object:
    if value == 0:
        return default
    if value not in table:
        raise InvalidArgument(f"{field} has an unknown value {value}")
    return table[value]


def resolve_strategy(value: int, default: str) -> StrategyName:
    if value == 0:
        return StrategyName(default)
    return _enum(value, STRATEGY_FROM_PROTO, "strategy", None)  # type: ignore[return-value]


def resolve_preset(value: int, default: str) -> Preset:
    if value == 0:
        return Preset(default)
    return _enum(value, PRESET_FROM_PROTO, "preset", None)  # type: ignore[return-value]


def resolve_options(
    preset: Preset, weights: retriever_pb2.Weights, choices: retriever_pb2.StrategyOptions
) -> Options:
    """The preset's values with the caller's overrides; each weight in [0, 1] and alpha + beta <= 1."""
    values = PRESETS[preset]
    resolved: dict[str, float] = {}
    for name, default in (
        ("alpha", values.alpha),
        ("beta", values.beta),
        ("gamma", values.gamma),
        ("weimocir_a", values.weimocir_a),
        ("weimocir_b", values.weimocir_b),
    ):
        value = float(getattr(weights, name)) if weights.HasField(name) else default
        if not 0.0 <= value <= 1.0:
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
        edit_mode=_enum(choices.edit_mode, EDIT_MODE_FROM_PROTO, "options.edit_mode", EditMode.PER_CAPTION),  # type: ignore[arg-type]
        objects_caption_selection=_enum(  # type: ignore[arg-type]
            choices.objects_caption_selection,
            SELECTION_FROM_PROTO,
            "options.objects_caption_selection",
            CaptionSelection.ALL_JOINED,
        ),
        score=_enum(choices.score_function, SCORE_FROM_PROTO, "options.score_function", ScoreFunction.DOT),  # type: ignore[arg-type]
        weimocir_variant=_enum(  # type: ignore[arg-type]
            choices.weimocir_variant, WEIMOCIR_FROM_PROTO, "options.weimocir_variant", WeiMoCirVariant.CODED
        ),
        edit_template=choices.edit_template or values.edit_template,
    )
