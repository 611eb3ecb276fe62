"""`cir triplets` pairing: the `--pairs` forms and the plans each makes (no services)."""

from __future__ import annotations

import numpy as np
import pytest

from cir_tools.triplets.errors import TripletUsageError
from cir_tools.triplets.pairing import (
    KNN_CANDIDATES,
    GalleryEntry,
    PairingKind,
    PairingSpec,
    parse_pairing,
    plan_pairs,
)

RANDOM = PairingSpec(PairingKind.RANDOM)
KNN = PairingSpec(PairingKind.KNN)


def _gallery(n: int, **metadata: list[str | None]) -> list[GalleryEntry]:
    """n images "img-00".., each with the given metadata values (None: the key is absent)."""
    rng = np.random.default_rng(7)
    entries = []
    for i in range(n):
        values = {key: column[i] for key, column in metadata.items() if column[i] is not None}
        feature = rng.normal(size=8).astype(np.float32)
        entries.append(GalleryEntry(f"img-{i:02d}", f"/g/{i}.png", values, feature / np.linalg.norm(feature)))
    return entries


def _check_distinct(pairs: list[tuple[str, str]]) -> None:
    assert all(a != b for a, b in pairs)
    assert len({frozenset(pair) for pair in pairs}) == len(pairs)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("random", RANDOM),
        ("knn", KNN),
        ("same-metadata:category", PairingSpec(PairingKind.SAME_METADATA, "category")),
        (" same-metadata: shape ", PairingSpec(PairingKind.SAME_METADATA, "shape")),
    ],
)
def test_the_accepted_forms(text: str, spec: PairingSpec) -> None:
    assert parse_pairing(text) == spec
    assert parse_pairing(spec.label) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nearest", "'nearest' is not a pairing; write random, knn or same-metadata:KEY"),
        ("", "'' is not a pairing"),
        ("same-metadata", "'same-metadata' names no metadata key: write same-metadata:KEY"),
        ("same-metadata:", "'same-metadata:' names no metadata key"),
        ("same-metadata:  ", "names no metadata key"),
        ("knn:5", "'knn:5': knn takes no argument; write random, knn or same-metadata:KEY"),
        ("random:x", "random takes no argument"),
    ],
)
def test_bad_forms_are_refused_naming_the_accepted_ones(text: str, message: str) -> None:
    with pytest.raises(TripletUsageError) as caught:
        parse_pairing(text)
    assert message in str(caught.value)
    assert "random, knn or same-metadata:KEY" in str(caught.value)


def test_random_pairs_are_distinct_deterministic_and_one_per_image_by_default() -> None:
    gallery = _gallery(12)
    plan = plan_pairs(gallery, RANDOM, None, seed=3)
    assert (len(plan.pairs), plan.available) == (12, 66)
    _check_distinct(plan.pairs)
    # The store's export order does not matter; the seed does.
    assert plan_pairs(gallery[::-1], RANDOM, None, seed=3).pairs == plan.pairs
    assert plan_pairs(gallery, RANDOM, None, seed=4).pairs != plan.pairs
    # A larger count keeps going past the default's pairs; asking for more than exist gives all of them.
    assert len(plan_pairs(gallery, RANDOM, 40, seed=3).pairs) == 40
    every = plan_pairs(gallery, RANDOM, 500, seed=3).pairs
    assert len(every) == 66
    _check_distinct(every)
    directions = {pair[0] < pair[1] for pair in every}
    assert directions == {True, False}  # both directions are drawn


def test_random_pairs_are_drawn_without_a_list_on_a_large_gallery() -> None:
    gallery = [GalleryEntry(f"{i:05d}", f"{i}.png") for i in range(1000)]  # 499500 pairs: over the list limit
    plan = plan_pairs(gallery, RANDOM, 3000, seed=0)
    assert len(plan.pairs) == 3000
    _check_distinct(plan.pairs)
    assert plan_pairs(gallery, RANDOM, 3000, seed=0).pairs == plan.pairs


def test_same_metadata_pairs_share_the_value_and_skip_images_without_the_key() -> None:
    shapes = ["circle", "square", None, "circle", "square", "circle", "", "triangle", None, "square"]
    gallery = _gallery(10, shape=shapes)
    spec = PairingSpec(PairingKind.SAME_METADATA, "shape")
    plan = plan_pairs(gallery, spec, None, seed=1)
    assert plan.skipped_images == 3  # two without the key, one with it empty
    assert plan.available == 3 + 3  # C(3, 2) circles + C(3, 2) squares; the lone triangle has no partner
    assert len(plan.pairs) == 6  # one per image in a shared group, cut to what exists
    shape_of = {entry.id: entry.metadata.get("shape") for entry in gallery}
    assert all(shape_of[a] == shape_of[b] for a, b in plan.pairs)
    _check_distinct(plan.pairs)
    assert plan_pairs(gallery, spec, 2, seed=1).pairs == plan_pairs(gallery, spec, 2, seed=1).pairs


def test_same_metadata_with_no_shared_value_is_refused() -> None:
    gallery = _gallery(4, colour=["red", "blue", None, "green"])
    with pytest.raises(TripletUsageError, match="no two images of collection 'c' share a value of 'colour'"):
        plan_pairs(gallery, PairingSpec(PairingKind.SAME_METADATA, "colour"), None, 0, "c")
    with pytest.raises(TripletUsageError, match=r"\(0 of 4 images have the key\)"):
        plan_pairs(gallery, PairingSpec(PairingKind.SAME_METADATA, "size"), None, 0, "c")


def test_knn_pairs_each_reference_with_one_of_its_nearest_neighbours() -> None:
    gallery = _gallery(20)
    plan = plan_pairs(gallery, KNN, None, seed=5)
    assert len(plan.pairs) == 20
    _check_distinct(plan.pairs)
    features = {entry.id: entry.feature for entry in gallery}
    ids = [entry.id for entry in gallery]
    for reference, target in plan.pairs:
        similarities = {
            other: float(features[reference] @ features[other]) for other in ids if other != reference
        }
        nearest = sorted(similarities, key=lambda other: -similarities[other])[:KNN_CANDIDATES]
        assert target in nearest
    assert plan_pairs(gallery[::-1], KNN, None, seed=5).pairs == plan.pairs
    # More than one round: references get further neighbours, still no pair twice.
    more = plan_pairs(gallery, KNN, 45, seed=5)
    assert len(more.pairs) == min(45, more.available)
    _check_distinct(more.pairs)


def test_knn_never_pairs_an_image_with_itself_even_among_duplicates() -> None:
    same = np.ones(4, dtype=np.float32) / 2
    gallery = [GalleryEntry(f"dup-{i}", f"{i}.png", feature=same) for i in range(3)]
    plan = plan_pairs(gallery, KNN, 10, seed=0)
    assert plan.available == 3 and len(plan.pairs) == 3
    _check_distinct(plan.pairs)


def test_knn_without_image_features_is_refused() -> None:
    gallery = [*_gallery(3), GalleryEntry("no-feature", "x.png")]
    with pytest.raises(
        TripletUsageError, match="knn needs every image's feature; 1 of 4 images of collection 'c'"
    ):
        plan_pairs(gallery, KNN, None, 0, "c")


@pytest.mark.parametrize("spec", [RANDOM, KNN, PairingSpec(PairingKind.SAME_METADATA, "k")])
def test_fewer_than_two_images_are_refused(spec: PairingSpec) -> None:
    with pytest.raises(TripletUsageError, match="collection 'c' has 1 image"):
        plan_pairs(_gallery(1, k=["a"]), spec, None, 0, "c")
    with pytest.raises(TripletUsageError, match="has 0 image"):
        plan_pairs([], spec, None, 0, "c")


def test_a_count_below_one_is_refused() -> None:
    with pytest.raises(TripletUsageError, match="--count 0: ask for at least 1 pair"):
        plan_pairs(_gallery(3), RANDOM, 0, 0)
