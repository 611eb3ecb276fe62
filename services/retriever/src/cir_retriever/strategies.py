"""Every strategy of method.md 4 as: what it needs computed, and how its query and gallery vectors are made.

The service computes the `QueryInputs` a strategy asks for (`requirements`), then `compose_query`
turns them into one query vector and the `GallerySpec` of the precomputed gallery matrix it is
searched against (an inner-product search). The arithmetic itself lives in `fusion`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from cir_common.vocabulary import CaptionSelection, EditMode
from cir_retriever import fusion
from cir_retriever.fusion import ScoreFunction, normalize
from cir_retriever.gallery.types import GalleryFeatures, GalleryKind, GallerySpec


class StrategyName(StrEnum):
    IMAGE_ONLY = "image_only"
    TEXT_ONLY = "text_only"
    CAPTIONING = "captioning"
    PIC2WORD = "pic2word"
    SEARLE = "searle"
    LINCIR = "lincir"
    CIREVL = "cirevl"
    LDRE = "ldre"
    WEIMOCIR = "weimocir"
    CVSI = "cvsi"
    INSTRUCTCIR = "instructcir"


class WeiMoCirVariant(StrEnum):
    CODED = "coded"
    PAPER = "paper"


class InstructCirVariant(StrEnum):
    PLAIN = "plain"  # the InstructCIR query embedding alone
    FUSED = "fused"  # Eq. 3: mixed with the text's plain CLIP embedding by the checkpoint's learned weight


TEXTUAL_INVERSION = {StrategyName.PIC2WORD, StrategyName.SEARLE, StrategyName.LINCIR}

DESCRIPTIONS: dict[StrategyName, str] = {
    StrategyName.IMAGE_ONLY: "reference image embedding against gallery images (baseline)",
    StrategyName.TEXT_ONLY: "modification text embedding against gallery images (baseline)",
    StrategyName.CAPTIONING: "first caption + modification text, embedded as one text (baseline)",
    StrategyName.PIC2WORD: "'a photo of $ that <text>' with Pic2Word's mapping network",
    StrategyName.SEARLE: "'a photo of $ that <text>' with SEARLE's mapping network",
    StrategyName.LINCIR: "'a photo of $ that <text>' with LinCIR's mapping network",
    StrategyName.CIREVL: "one LLM-edited caption (from the first caption) against gallery images",
    StrategyName.LDRE: "ensemble of per-caption LLM edits against gallery images",
    StrategyName.WEIMOCIR: "weighted image/text fusion against image and caption features",
    StrategyName.CVSI: "edited captions + fine-grained pseudo-token prompt + image vs images + captions",
    StrategyName.INSTRUCTCIR: "InstructCIR query embedding of (image, text) vs the gallery's InstructCIR "
    "target embeddings (plain or Eq. 3 fused)",
}


@dataclass(frozen=True)
class Options:
    """Weights and variants after the preset and the caller's overrides were applied."""

    alpha: float
    beta: float
    gamma: float
    weimocir_a: float
    weimocir_b: float
    caption_features_renormalized: bool
    edit_mode: EditMode
    objects_caption_selection: CaptionSelection
    score: ScoreFunction
    weimocir_variant: WeiMoCirVariant
    edit_template: str
    instructcir_variant: InstructCirVariant = InstructCirVariant.PLAIN


@dataclass(frozen=True)
class Requirements:
    """What the query pipeline must compute for a strategy."""

    captions: bool = False
    text_embedding: bool = False
    captioning_text: bool = False
    pseudo_prompt: str | None = None  # mapping-network name; "" = the encoder's default; None = not needed
    edits: EditMode | None = None
    edit_first_caption_only: bool = False
    objects: bool = False
    # The encoder's InstructCIR query embedding, in this variant; None = not needed.
    instructcir: InstructCirVariant | None = None


def requirements(strategy: StrategyName, options: Options) -> Requirements:
    if strategy is StrategyName.IMAGE_ONLY:
        return Requirements()
    if strategy is StrategyName.TEXT_ONLY:
        return Requirements(text_embedding=True)
    if strategy is StrategyName.CAPTIONING:
        return Requirements(captions=True, captioning_text=True)
    if strategy in TEXTUAL_INVERSION:
        return Requirements(pseudo_prompt=strategy.value)
    if strategy is StrategyName.CIREVL:
        return Requirements(captions=True, edits=EditMode.PER_CAPTION, edit_first_caption_only=True)
    if strategy is StrategyName.LDRE:
        return Requirements(captions=True, edits=EditMode.PER_CAPTION)
    if strategy is StrategyName.WEIMOCIR:
        return Requirements(captions=True, text_embedding=True)
    if strategy is StrategyName.INSTRUCTCIR:
        return Requirements(instructcir=options.instructcir_variant)
    # "" = the encoder's default mapping network (LinCIR in the CVSI profiles)
    return Requirements(captions=True, edits=options.edit_mode, objects=True, pseudo_prompt="")


@dataclass
class QueryInputs:
    """Raw (unnormalised) features of one query; None where not computed or not available."""

    image: np.ndarray
    text: np.ndarray | None = None
    captioning_text: np.ndarray | None = None
    pseudo_prompt: np.ndarray | None = None
    edits: np.ndarray | None = None  # (M, d)
    caption_slots: np.ndarray | None = None  # (R, d): the reference's first R caption features
    # (N, d): every caption of the reference; computed only when asked for (LDRE's adaptive weights)
    reference_captions: np.ndarray | None = None
    # (d_i,): the encoder's InstructCIR query embedding (fused by Eq. 3 in that variant); None when its stage
    # degraded (the search then ranks as image_only: `ranked_as`)
    instructcir_query: np.ndarray | None = None


def compose_query(
    strategy: StrategyName, inputs: QueryInputs, options: Options
) -> tuple[np.ndarray, GallerySpec]:
    """The query vector and the gallery it is searched against. Missing LLM/caption parts must be filled
    with their fallbacks by the caller before this point; a missing required input raises ValueError."""
    image = GallerySpec(GalleryKind.IMAGE)
    if strategy is StrategyName.IMAGE_ONLY:
        return normalize(inputs.image), image
    if strategy is StrategyName.TEXT_ONLY:
        return normalize(_required(inputs.text, "text")), image
    if strategy is StrategyName.CAPTIONING:
        return normalize(_required(inputs.captioning_text, "captioning_text")), image
    if strategy in TEXTUAL_INVERSION:
        return normalize(_required(inputs.pseudo_prompt, "pseudo_prompt")), image
    if strategy is StrategyName.CIREVL:
        return normalize(_required(inputs.edits, "edits")[0]), image
    if strategy is StrategyName.LDRE:
        return fusion.ldre_mean_query(_required(inputs.edits, "edits")), image
    if strategy is StrategyName.WEIMOCIR:
        return _weimocir(inputs, options)
    if strategy is StrategyName.INSTRUCTCIR:
        return normalize(_required(inputs.instructcir_query, "instructcir_query")), GallerySpec(
            GalleryKind.INSTRUCTCIR
        )
    q = fusion.cvsi_query(
        q_m=fusion.edited_caption_feature(_required(inputs.edits, "edits")),
        q_f=normalize(_required(inputs.pseudo_prompt, "pseudo_prompt")),
        q_v=normalize(inputs.image),
        alpha=options.alpha,
        beta=options.beta,
    )
    spec = GallerySpec(GalleryKind.CVSI, options.gamma, options.caption_features_renormalized, options.score)
    # For cosine the gallery rows are t/|t|; scaling q to unit length makes q . row the cosine itself.
    return (normalize(q) if options.score is ScoreFunction.COSINE else q), spec


def ranked_as(strategy: StrategyName, inputs: QueryInputs) -> StrategyName:
    """The strategy a query is ranked by: InstructCIR whose query stage degraded (no query embedding) falls
    back to image_only, the reference image alone; every other strategy is itself."""
    if strategy is StrategyName.INSTRUCTCIR and inputs.instructcir_query is None:
        return StrategyName.IMAGE_ONLY
    return strategy


def without_missing_caption_slots(
    strategy: StrategyName, inputs: QueryInputs, options: Options, gallery_slots: int
) -> tuple[QueryInputs, Options]:
    """WeiMoCIR with no reference captions keeps only its image term (b = 0); other strategies unchanged.

    The query gets `gallery_slots` zero slots (the gallery's R), so the coded query keeps the width of the
    coded gallery rows it is searched against. New objects: the caller's inputs (returned to clients, or
    cached by the evaluation) never hold the stand-in slots.
    """
    if strategy is not StrategyName.WEIMOCIR or inputs.caption_slots is not None:
        return inputs, options
    zeros = np.zeros((max(gallery_slots, 1), inputs.image.shape[0]), np.float32)
    return replace(inputs, caption_slots=zeros), replace(options, weimocir_b=0.0)


def _weimocir(inputs: QueryInputs, options: Options) -> tuple[np.ndarray, GallerySpec]:
    text = _required(inputs.text, "text")
    a, b = options.weimocir_a, options.weimocir_b
    if options.weimocir_variant is WeiMoCirVariant.PAPER:
        return fusion.weimocir_fuse(inputs.image, text, a), GallerySpec(
            GalleryKind.WEIMOCIR_PAPER, weimocir_b=b
        )
    slots = _required(inputs.caption_slots, "caption_slots")
    return fusion.weimocir_coded_query(inputs.image, slots, text, a, b), GallerySpec(
        GalleryKind.WEIMOCIR_CODED
    )


def _required(value: np.ndarray | None, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"the query input {name!r} was not computed")
    return value


def gallery_matrix(spec: GallerySpec, features: GalleryFeatures) -> np.ndarray:
    """The matrix a strategy's query is searched against (row n scores image n)."""
    if spec.kind is GalleryKind.IMAGE:
        return features.t_v
    if spec.kind is GalleryKind.CVSI:
        t_c = features.caption_mean
        if spec.caption_features_renormalized:
            t_c = normalize(t_c)
        return fusion.searchable_gallery(fusion.cvsi_gallery(t_c, features.t_v, spec.gamma), spec.score)
    if spec.kind is GalleryKind.WEIMOCIR_CODED:
        return fusion.weimocir_coded_gallery(features.caption_slots, features.t_v)
    if spec.kind is GalleryKind.INSTRUCTCIR:
        if features.instructcir_target is None:
            raise ValueError(
                "these gallery features hold no InstructCIR target embeddings: export them from a collection "
                "ingested while the encoder served an InstructCIR checkpoint"
            )
        return features.instructcir_target
    return fusion.weimocir_paper_gallery(features.caption_slots, features.t_v, spec.weimocir_b)
