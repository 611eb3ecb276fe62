"""Every strategy and variant against a direct computation of its formula (method.md 3-4).

The expected scores are written out here term by term, per gallery image, from the formulas in
method.md, independently of how the service arranges them into one inner-product search.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cir_common.vocabulary import CaptionSelection, EditMode
from cir_retriever import fusion
from cir_retriever.fusion import ScoreFunction
from cir_retriever.presets import PRESETS, WEIMOCIR_SLOTS, Preset
from cir_retriever.strategies import (
    GalleryFeatures,
    Options,
    QueryInputs,
    StrategyName,
    WeiMoCirVariant,
    compose_query,
    gallery_matrix,
    without_missing_caption_slots,
)

RNG = np.random.default_rng(1234)
N_GALLERY, N_CAPTIONS, DIM = 40, 6, 16
V = RNG.normal(size=(N_GALLERY, DIM)).astype(np.float32)  # raw gallery image features
C = RNG.normal(size=(N_GALLERY, N_CAPTIONS, DIM)).astype(np.float32)  # raw gallery caption features
REF_V = RNG.normal(size=DIM).astype(np.float32)
REF_C = RNG.normal(size=(N_CAPTIONS, DIM)).astype(np.float32)
T = RNG.normal(size=DIM).astype(np.float32)
CAPTIONING = RNG.normal(size=DIM).astype(np.float32)
PSEUDO = RNG.normal(size=DIM).astype(np.float32)
EDITS = RNG.normal(size=(N_CAPTIONS, DIM)).astype(np.float32)


def unit(x):
    return x / np.linalg.norm(x)


def cos(a, b):
    return float(unit(a) @ unit(b))


def gallery() -> GalleryFeatures:
    """As the store keeps it: t_v normalised, t_c the mean of normalised captions, first R raw captions."""
    t_v = np.stack([unit(v) for v in V])
    caption_mean = np.stack([np.mean([unit(c) for c in caps], axis=0) for caps in C])
    return GalleryFeatures(t_v=t_v, caption_mean=caption_mean, caption_slots=C[:, :WEIMOCIR_SLOTS])


def inputs(edits: np.ndarray = EDITS) -> QueryInputs:
    return QueryInputs(
        image=REF_V,
        text=T,
        captioning_text=CAPTIONING,
        pseudo_prompt=PSEUDO,
        edits=edits,
        caption_slots=REF_C[:WEIMOCIR_SLOTS],
    )


def options(preset: Preset = Preset.CIRCO, **overrides) -> Options:
    values = PRESETS[preset]
    base = dict(
        alpha=values.alpha,
        beta=values.beta,
        gamma=values.gamma,
        weimocir_a=values.weimocir_a,
        weimocir_b=values.weimocir_b,
        caption_features_renormalized=values.caption_features_renormalized,
        edit_mode=EditMode.PER_CAPTION,
        objects_caption_selection=CaptionSelection.ALL_JOINED,
        score=ScoreFunction.DOT,
        weimocir_variant=WeiMoCirVariant.CODED,
        edit_template=values.edit_template,
    )
    base.update(overrides)
    return Options(**base)


def service_scores(strategy: StrategyName, query_inputs: QueryInputs, opts: Options) -> np.ndarray:
    q, spec = compose_query(strategy, query_inputs, opts)
    return gallery_matrix(spec, gallery()) @ q


def check(got: np.ndarray, expected: list[float]) -> None:
    expected_arr = np.array(expected)
    np.testing.assert_allclose(got, expected_arr, atol=1e-5, rtol=0)
    assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-expected_arr, kind="stable"))


@pytest.mark.parametrize(
    ("strategy", "query"),
    [
        (StrategyName.IMAGE_ONLY, REF_V),
        (StrategyName.TEXT_ONLY, T),
        (StrategyName.CAPTIONING, CAPTIONING),
        (StrategyName.PIC2WORD, PSEUDO),
        (StrategyName.SEARLE, PSEUDO),
        (StrategyName.LINCIR, PSEUDO),
        (StrategyName.CIREVL, EDITS[0]),
    ],
)
def test_single_vector_strategies_rank_by_cosine_to_gallery_images(strategy, query):
    check(service_scores(strategy, inputs(), options()), [cos(query, V[n]) for n in range(N_GALLERY)])


def test_ldre_mean_of_raw_edit_features_normalised():
    q = unit(EDITS.mean(axis=0))
    check(
        service_scores(StrategyName.LDRE, inputs(), options()),
        [float(q @ unit(V[n])) for n in range(N_GALLERY)],
    )


def test_ldre_weighted_query_is_the_weighted_sum_of_normalised_edits():
    weights = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    expected = sum(w * unit(e) for w, e in zip(weights, EDITS, strict=True))
    np.testing.assert_allclose(fusion.ldre_weighted_query(EDITS, weights), expected, atol=1e-6)


def test_ldre_adaptive_weights_by_hand():
    queries, slots = 4, 3
    edited = np.stack([[unit(RNG.normal(size=DIM)) for _ in range(slots)] for _ in range(queries)])
    original = np.stack([[unit(RNG.normal(size=DIM)) for _ in range(slots)] for _ in range(queries)])
    images = np.stack([unit(v) for v in V])
    s = []
    for i in range(slots):
        total = 0.0
        for qi in range(queries):
            drops = [-min(float(edited[qi, i] @ img - original[qi, i] @ img), 0.0) for img in images]
            total += sum(sorted(drops, reverse=True)[:5])
        s.append(total)
    s = np.array(s)
    logits = s / s.max() / 0.04
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(fusion.ldre_adaptive_weights(edited, original, images), expected, atol=1e-6)


@pytest.mark.parametrize(("a", "b"), [(0.8, 0.1), (0.95, 0.2), (0.5, 0.0), (0.3, 1.0)])
def test_weimocir_coded(a, b):
    def fuse(v, t):
        return unit((1 - a) * v + a * t)

    expected = []
    for n in range(N_GALLERY):
        s_k = [float(fuse(REF_C[k], T) @ unit(C[n, k])) for k in range(WEIMOCIR_SLOTS)]
        s_img = float(fuse(REF_V, T) @ unit(V[n]))
        expected.append(b * np.mean(s_k) + (1 - b) * s_img)
    opts = options(weimocir_a=a, weimocir_b=b, weimocir_variant=WeiMoCirVariant.CODED)
    check(service_scores(StrategyName.WEIMOCIR, inputs(), opts), expected)
    got = fusion.weimocir_coded_scores(
        REF_V, REF_C[:WEIMOCIR_SLOTS], T, C[:, :WEIMOCIR_SLOTS], gallery().t_v, a, b
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("variant", [WeiMoCirVariant.CODED, WeiMoCirVariant.PAPER])
def test_weimocir_without_reference_captions_keeps_only_its_image_term(variant):
    """Captioner down: b = 0, the coded query still fits the coded gallery rows (R slots)."""
    a = 0.8
    no_captions = QueryInputs(image=REF_V, text=T)
    filled, opts = without_missing_caption_slots(
        StrategyName.WEIMOCIR, no_captions, options(weimocir_a=a, weimocir_variant=variant), WEIMOCIR_SLOTS
    )
    assert opts.weimocir_b == 0.0
    assert no_captions.caption_slots is None  # the caller's inputs keep no stand-in slots
    q_img = unit((1 - a) * REF_V + a * T)
    check(service_scores(StrategyName.WEIMOCIR, filled, opts), [cos(q_img, V[n]) for n in range(N_GALLERY)])


def test_only_weimocir_without_captions_changes_its_options():
    opts = options()
    cvsi_inputs = QueryInputs(image=REF_V)
    assert without_missing_caption_slots(StrategyName.CVSI, cvsi_inputs, opts, 3) == (cvsi_inputs, opts)
    full = inputs()
    assert without_missing_caption_slots(StrategyName.WEIMOCIR, full, opts, 3) == (full, opts)


@pytest.mark.parametrize(("a", "b"), [(0.8, 0.1), (0.95, 0.2)])
def test_weimocir_paper(a, b):
    q = unit((1 - a) * REF_V + a * T)
    expected = [
        (1 - b) * cos(q, V[n]) + b * np.mean([cos(q, C[n, r]) for r in range(WEIMOCIR_SLOTS)])
        for n in range(N_GALLERY)
    ]
    opts = options(weimocir_a=a, weimocir_b=b, weimocir_variant=WeiMoCirVariant.PAPER)
    check(service_scores(StrategyName.WEIMOCIR, inputs(), opts), expected)


def direct_cvsi(edits, alpha, beta, gamma, renormalize, score) -> list[float]:
    q_m = np.mean([unit(e) for e in edits], axis=0)
    q_f = unit(PSEUDO)
    q_v = unit(REF_V)
    q = alpha * q_m + beta * q_f + (1 - alpha - beta) * q_v
    expected = []
    for n in range(N_GALLERY):
        t_c = np.mean([unit(c) for c in C[n]], axis=0)
        if renormalize:
            t_c = unit(t_c)
        t = gamma * t_c + (1 - gamma) * unit(V[n])
        expected.append(float(q @ t) if score is ScoreFunction.DOT else cos(q, t))
    return expected


@pytest.mark.parametrize(
    ("preset", "mode", "score"),
    list(itertools.product(list(Preset), list(EditMode), list(ScoreFunction))),
)
def test_cvsi_every_preset_mode_and_score(preset, mode, score):
    edits = EDITS if mode is EditMode.PER_CAPTION else EDITS[:1]  # joined: one edited caption
    opts = options(preset, edit_mode=mode, score=score)
    values = PRESETS[preset]
    expected = direct_cvsi(
        edits, values.alpha, values.beta, values.gamma, values.caption_features_renormalized, score
    )
    check(service_scores(StrategyName.CVSI, inputs(edits), opts), expected)


def test_cvsi_in_one_function_matches_the_direct_formula():
    g = gallery()
    for score in ScoreFunction:
        got = fusion.cvsi(
            fusion.edited_caption_feature(EDITS),
            unit(PSEUDO),
            unit(REF_V),
            g.caption_mean,
            g.t_v,
            0.3,
            0.5,
            0.4,
            score,
        )
        np.testing.assert_allclose(got, direct_cvsi(EDITS, 0.3, 0.5, 0.4, False, score), atol=1e-5)


def test_cvsi_preset_weights_as_published():
    assert (PRESETS[Preset.CIRCO].alpha, PRESETS[Preset.CIRCO].beta, PRESETS[Preset.CIRCO].gamma) == (
        0.6,
        0.4,
        0.2,
    )
    assert (PRESETS[Preset.CIRR].alpha, PRESETS[Preset.CIRR].beta, PRESETS[Preset.CIRR].gamma) == (
        0.6,
        0.4,
        0.2,
    )
    fiq = PRESETS[Preset.FASHIONIQ]
    assert (fiq.alpha, fiq.beta, fiq.gamma, fiq.caption_features_renormalized) == (0.2, 0.6, 0.1, True)


def test_fine_grained_prompt_is_the_released_string():
    assert (
        fusion.fine_grained_prompt("is red", "a hat, a scarf")
        == "a photo of $ that is red. And the photo should have a hat, a scarf."
    )
    assert fusion.textual_inversion_prompt("is red") == "a photo of $ that is red"
    assert fusion.captioning_text("a dog on grass", "on a beach") == "a dog on grass on a beach"
