"""The instructcir strategy's composition: what it needs, its query vector, the gallery matrix it is searched
against, its variant from the request to the encoder's `fused` flag, and its fallback when the query stage
degraded. No models: the arithmetic and the conversions only."""

from __future__ import annotations

import numpy as np
import pytest

from cir.retriever.v1 import retriever_pb2
from cir_common.errors import InvalidArgument
from cir_retriever.conversions import (
    choices_from_proto,
    gallery_images_from_proto,
    gallery_page_to_proto,
    query_features_from_proto,
    query_features_to_proto,
    resolve_options_from_proto,
    resolved_to_proto,
)
from cir_retriever.core import SearchResult
from cir_retriever.gallery.types import FeaturePage
from cir_retriever.options import VariantChoices, WeightOverrides, resolve_options
from cir_retriever.presets import Preset
from cir_retriever.query import Trace, essential_chains
from cir_retriever.strategies import (
    GalleryFeatures,
    GalleryKind,
    GallerySpec,
    InstructCirVariant,
    QueryInputs,
    StrategyName,
    compose_query,
    gallery_matrix,
    ranked_as,
    requirements,
)

RNG = np.random.default_rng(18)
DIM, TARGET_DIM, N = 8, 6, 12  # InstructCIR embeddings have their own dimension


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def features(with_targets: bool = True) -> GalleryFeatures:
    return GalleryFeatures(
        t_v=unit_rows(RNG.normal(size=(N, DIM)).astype(np.float32)),
        caption_mean=RNG.normal(size=(N, DIM)).astype(np.float32),
        caption_slots=RNG.normal(size=(N, 3, DIM)).astype(np.float32),
        instructcir_target=unit_rows(RNG.normal(size=(N, TARGET_DIM)).astype(np.float32))
        if with_targets
        else None,
    )


def options(variant: InstructCirVariant | None = None):
    return resolve_options(Preset.CIRCO, WeightOverrides(), VariantChoices(instructcir_variant=variant))


def test_it_needs_only_the_instructcir_query_in_its_variant():
    plain = requirements(StrategyName.INSTRUCTCIR, options())
    assert plain.instructcir is InstructCirVariant.PLAIN  # the default variant
    assert not plain.captions and not plain.text_embedding and plain.pseudo_prompt is None
    assert plain.edits is None and not plain.objects
    fused = requirements(StrategyName.INSTRUCTCIR, options(InstructCirVariant.FUSED))
    assert fused.instructcir is InstructCirVariant.FUSED
    # no other strategy asks for it
    assert all(
        requirements(s, options()).instructcir is None
        for s in StrategyName
        if s is not StrategyName.INSTRUCTCIR
    )
    # its only essential stage is the reference image's embedding (the fallback's query): the InstructCIR
    # query degrades instead of failing the search
    assert [c for c in essential_chains(plain, reference_by_bytes=True) if c] == [("embed_reference_image",)]


def test_the_query_is_the_normalised_instructcir_embedding_against_the_target_column():
    gallery = features()
    raw = RNG.normal(size=TARGET_DIM).astype(np.float32) * 7.0  # the encoder's raw query
    inputs = QueryInputs(image=RNG.normal(size=DIM).astype(np.float32), instructcir_query=raw)
    q, spec = compose_query(StrategyName.INSTRUCTCIR, inputs, options())
    assert spec == GallerySpec(GalleryKind.INSTRUCTCIR)
    np.testing.assert_allclose(q, raw / np.linalg.norm(raw), rtol=1e-6)
    matrix = gallery_matrix(spec, gallery)
    assert matrix is gallery.instructcir_target  # the stored targets themselves, not the image features
    # scores are cosines between the query and each target
    expected = [float(raw @ t / np.linalg.norm(raw)) for t in gallery.instructcir_target]
    np.testing.assert_allclose(matrix @ q, expected, rtol=1e-5)


def test_gallery_features_without_targets_cannot_serve_it():
    with pytest.raises(ValueError, match="no InstructCIR target"):
        gallery_matrix(GallerySpec(GalleryKind.INSTRUCTCIR), features(with_targets=False))


def test_a_degraded_query_ranks_as_image_only_and_other_strategies_keep_theirs():
    image = RNG.normal(size=DIM).astype(np.float32)
    degraded = QueryInputs(image=image)
    assert ranked_as(StrategyName.INSTRUCTCIR, degraded) is StrategyName.IMAGE_ONLY
    q, spec = compose_query(ranked_as(StrategyName.INSTRUCTCIR, degraded), degraded, options())
    assert spec.kind is GalleryKind.IMAGE
    np.testing.assert_allclose(q, image / np.linalg.norm(image), rtol=1e-6)
    with pytest.raises(ValueError, match="instructcir_query"):
        compose_query(StrategyName.INSTRUCTCIR, degraded, options())  # never silently: the caller decides
    ready = QueryInputs(image=image, instructcir_query=np.ones(TARGET_DIM, np.float32))
    assert ranked_as(StrategyName.INSTRUCTCIR, ready) is StrategyName.INSTRUCTCIR
    assert ranked_as(StrategyName.CVSI, degraded) is StrategyName.CVSI


def test_the_variant_goes_from_the_request_to_the_resolved_strategy():
    for proto_value, variant in (
        (retriever_pb2.INSTRUCT_CIR_VARIANT_UNSPECIFIED, InstructCirVariant.PLAIN),
        (retriever_pb2.INSTRUCT_CIR_VARIANT_PLAIN, InstructCirVariant.PLAIN),
        (retriever_pb2.INSTRUCT_CIR_VARIANT_FUSED, InstructCirVariant.FUSED),
    ):
        request_options = retriever_pb2.StrategyOptions(instructcir_variant=proto_value)
        resolved = resolve_options_from_proto(Preset.CIRR, retriever_pb2.Weights(), request_options)
        assert resolved.instructcir_variant is variant
        assert requirements(StrategyName.INSTRUCTCIR, resolved).instructcir is variant
        result = SearchResult(
            hits=[],
            strategy=StrategyName.INSTRUCTCIR,
            preset=Preset.CIRR,
            options=resolved,
            trace=Trace(),
            collection_size=0,
            features=None,
        )
        shown = resolved_to_proto(result)
        assert shown.strategy == retriever_pb2.STRATEGY_INSTRUCTCIR
        assert shown.instructcir_variant == (
            retriever_pb2.INSTRUCT_CIR_VARIANT_FUSED
            if variant is InstructCirVariant.FUSED
            else retriever_pb2.INSTRUCT_CIR_VARIANT_PLAIN
        )
    with pytest.raises(InvalidArgument, match="instructcir_variant"):
        choices_from_proto(retriever_pb2.StrategyOptions(instructcir_variant=7))


def test_query_features_and_exported_targets_survive_their_messages():
    query = RNG.normal(size=TARGET_DIM).astype(np.float32)
    inputs = QueryInputs(image=RNG.normal(size=DIM).astype(np.float32), instructcir_query=query)
    back = query_features_from_proto(query_features_to_proto(inputs))
    np.testing.assert_array_equal(back.instructcir_query, query)
    degraded = query_features_from_proto(query_features_to_proto(QueryInputs(image=inputs.image)))
    assert degraded.instructcir_query is None

    for with_targets in (True, False):
        gallery = features(with_targets)
        page = FeaturePage(ids=[f"i{n}" for n in range(N)], uris=[""] * N, features=gallery, total=N)
        ids, read = gallery_images_from_proto(gallery_page_to_proto(page).images)
        assert ids == page.ids
        if with_targets:
            np.testing.assert_array_equal(read.instructcir_target, gallery.instructcir_target)
        else:
            assert read.instructcir_target is None
