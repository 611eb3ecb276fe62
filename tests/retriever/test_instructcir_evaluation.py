"""The instructcir column through the evaluation's offline half: the gallery cache keeps the targets, the
query cache is named by the variant, and re-scoring ranks as the service does (degraded queries included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cir_evaluation.feature_cache import (
    QueryRecord,
    gallery_has_targets,
    input_signature,
    load_gallery,
    save_gallery,
)
from cir_evaluation.rescoring import Gallery, rank_queries
from cir_retriever.options import VariantChoices, WeightOverrides, resolve_options
from cir_retriever.presets import Preset
from cir_retriever.strategies import GalleryFeatures, InstructCirVariant, QueryInputs, StrategyName

RNG = np.random.default_rng(21)
DIM, TARGET_DIM, N = 8, 5, 10


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def options(variant: InstructCirVariant = InstructCirVariant.PLAIN):
    return resolve_options(Preset.CIRR, WeightOverrides(), VariantChoices(instructcir_variant=variant))


def test_the_gallery_cache_keeps_the_targets_when_there_are_some(tmp_path: Path) -> None:
    features = GalleryFeatures(
        t_v=unit_rows(RNG.normal(size=(N, DIM)).astype(np.float32)),
        caption_mean=RNG.normal(size=(N, DIM)).astype(np.float32),
        caption_slots=RNG.normal(size=(N, 3, DIM)).astype(np.float32),
        instructcir_target=unit_rows(RNG.normal(size=(N, TARGET_DIM)).astype(np.float32)),
    )
    ids = [f"g{n}" for n in range(N)]
    save_gallery(tmp_path / "with.npz", ids, features)
    assert gallery_has_targets(tmp_path / "with.npz")
    read_ids, read = load_gallery(tmp_path / "with.npz")
    assert read_ids == ids
    np.testing.assert_array_equal(read.instructcir_target, features.instructcir_target)

    bare = GalleryFeatures(features.t_v, features.caption_mean, features.caption_slots)
    save_gallery(tmp_path / "without.npz", ids, bare)
    assert not gallery_has_targets(tmp_path / "without.npz")
    assert load_gallery(tmp_path / "without.npz")[1].instructcir_target is None


def test_the_query_cache_is_named_by_the_variant_and_others_keep_their_names() -> None:
    plain = input_signature(StrategyName.INSTRUCTCIR, options())
    fused = input_signature(StrategyName.INSTRUCTCIR, options(InstructCirVariant.FUSED))
    assert plain.startswith("instructcir-") and fused.startswith("instructcir-") and plain != fused
    # the InstructCIR variant changes nothing another strategy computes: its cache keeps its name
    for strategy in (StrategyName.CVSI, StrategyName.LDRE, StrategyName.IMAGE_ONLY):
        assert input_signature(strategy, options()) == input_signature(
            strategy, options(InstructCirVariant.FUSED)
        )


def test_rescoring_ranks_against_the_targets_and_a_degraded_query_by_its_image() -> None:
    targets = unit_rows(RNG.normal(size=(N, TARGET_DIM)).astype(np.float32))
    t_v = unit_rows(RNG.normal(size=(N, DIM)).astype(np.float32))
    gallery = Gallery(
        ids=[f"g{n}" for n in range(N)],
        features=GalleryFeatures(
            t_v=t_v,
            caption_mean=np.zeros((N, DIM), np.float32),
            caption_slots=np.zeros((N, 3, DIM), np.float32),
            instructcir_target=targets,
        ),
    )
    image = RNG.normal(size=DIM).astype(np.float32)
    query = RNG.normal(size=TARGET_DIM).astype(np.float32)
    records = {
        "ran": QueryRecord("ran", [], [], QueryInputs(image=image, instructcir_query=query)),
        "degraded": QueryRecord("degraded", [], [], QueryInputs(image=image)),
    }
    ranked = rank_queries(
        StrategyName.INSTRUCTCIR, options(), records, {"": gallery}, {"ran": "", "degraded": ""}, depth=None
    )
    by_targets = targets @ (query / np.linalg.norm(query))
    by_image = t_v @ (image / np.linalg.norm(image))
    assert ranked["ran"].ids == [gallery.ids[i] for i in np.argsort(-by_targets, kind="stable")]
    np.testing.assert_allclose(ranked["ran"].scores, np.sort(by_targets)[::-1], rtol=1e-5)
    assert ranked["degraded"].ids == [gallery.ids[i] for i in np.argsort(-by_image, kind="stable")]
