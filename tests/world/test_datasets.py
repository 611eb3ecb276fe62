"""World datasets: official layouts the evaluation readers load unchanged, heldout scenes only, seeded."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cir_evaluation.datasets import load_split
from cir_evaluation.model import FASHIONIQ_CATEGORIES, DatasetName, Query, Split
from cir_tools.cli import main as cir
from cir_tools.world.corpus import is_heldout
from cir_tools.world.datasets import (
    FASHIONIQ_CATEGORY_SHAPES,
    fashioniq_category,
    scene_from_record,
    scenes_file,
    write_world_dataset,
)
from cir_tools.world.edits import DISTRACTOR_KINDS, DISTRACTOR_REFERENCE, Modification, distractor_candidates
from cir_tools.world.scene import Scene


def _record(root: Path, dataset: str, split: str) -> dict[str, Any]:
    return json.loads(scenes_file(root, dataset, split).read_text())


def _scenes(root: Path, dataset: str, split: str) -> dict[str, Scene]:
    images = _record(root, dataset, split)["images"]
    return {image_id: scene_from_record(record) for image_id, record in images.items()}


def _variants(root: Path, dataset: str, split: str) -> dict[str, int]:
    images = _record(root, dataset, split)["images"]
    return {image_id: record["variant"] for image_id, record in images.items()}


@pytest.mark.parametrize("split", [Split.VAL, Split.TEST])
def test_cirr_image_sets_hold_reference_target_and_four_distractors(tmp_path: Path, split: Split) -> None:
    root = write_world_dataset("cirr", tmp_path, split, gallery_size=80, num_queries=25, seed=1)
    loaded = load_split(DatasetName.CIRR, root, split)
    gallery = {item.id for item in loaded.galleries[""]}
    scenes = _scenes(root, "cirr", split)
    assert len(gallery) >= 80 and len(loaded.queries) == 25 and set(scenes) == gallery
    assert all(is_heldout(scene) for scene in scenes.values())
    assert len(set(scenes.values())) == len(scenes)  # one image per scene: the target is unique
    for query in loaded.queries:
        assert len(query.subset) == 6 == len(set(query.subset)) and query.reference_id in query.subset
        assert set(query.subset) <= gallery
        if split is Split.VAL:
            assert query.target_id in query.subset and query.ground_truth == (query.target_id,)
            assert scenes[query.target_id] != scenes[query.reference_id]
        else:
            assert query.target_id == "" and query.ground_truth == ()
    if split is Split.VAL:
        _check_hard_distractors(root, loaded.queries, scenes)
    split_name = "val" if split is Split.VAL else "test1"
    captions = json.loads((root / "cirr" / "captions" / f"cap.rc2.{split_name}.json").read_text())
    for entry in captions:
        members = entry["img_set"]["members"]
        assert members[entry["img_set"]["reference_rank"]] == entry["reference"]
        if split is Split.VAL:
            assert members[entry["img_set"]["target_rank"]] == entry["target_hard"]
            assert entry["target_soft"] == {entry["target_hard"]: 1.0}


def _check_hard_distractors(root: Path, queries: tuple[Query, ...], scenes: dict[str, Scene]) -> None:
    """Every hard-distractor kind that exists among heldout scenes for a query is in its img_set."""
    described = {entry["id"]: entry for entry in _record(root, "cirr", "val")["queries"]}
    kinds_seen: set[str] = set()
    for query in queries:
        entry = described[query.id]
        reference, target = scenes[query.reference_id], scenes[query.target_id]
        modification = Modification(entry["kind"], query.text, reference, target)
        shown = {scenes[member] for member in query.subset}
        for kind, candidates in distractor_candidates(modification).items():
            available = {scene for scene in candidates if is_heldout(scene)}
            assert bool(available & shown) == bool(available), (query.id, kind)
            if available:
                kinds_seen.add(kind)
                assert kind == DISTRACTOR_REFERENCE or kind in entry["distractor_kinds"]
    assert kinds_seen == set(DISTRACTOR_KINDS)


def test_circo_ground_truths_are_renderings_of_the_target(tmp_path: Path) -> None:
    root = write_world_dataset("circo", tmp_path, "val", gallery_size=120, num_queries=20, seed=2)
    write_world_dataset("circo", tmp_path, "test", gallery_size=60, num_queries=10, seed=2)
    val = load_split(DatasetName.CIRCO, root, Split.VAL)
    test = load_split(DatasetName.CIRCO, root, Split.TEST)
    assert len(val.queries) == 20 and len(test.queries) == 10
    gallery = {item.id for item in val.galleries[""]}
    assert len(gallery) >= 180  # val and test images share the one image-info file
    scenes = _scenes(root, "circo", "val")
    variants = _variants(root, "circo", "val")
    assert all(is_heldout(scene) for scene in scenes.values())
    assert all(is_heldout(scene) for scene in _scenes(root, "circo", "test").values())
    for query in val.queries:
        truths = query.ground_truth
        assert 2 <= len(truths) <= 4 and query.target_id == truths[0] and set(truths) <= gallery
        assert len({scenes[image_id] for image_id in truths}) == 1
        assert len({variants[image_id] for image_id in truths}) == len(truths)
        # No other image shows the target scene: the ground truths are complete.
        target = scenes[truths[0]]
        assert {image_id for image_id, scene in scenes.items() if scene == target} == set(truths)
        assert scenes[query.reference_id] != target and query.semantic_aspects and query.shared_concept


def test_fashioniq_categories_keep_their_shape(tmp_path: Path) -> None:
    root = write_world_dataset("fashioniq", tmp_path, "val", gallery_size=90, num_queries=30, seed=3)
    loaded = load_split(DatasetName.FASHIONIQ, root, Split.VAL)
    assert set(loaded.galleries) == set(FASHIONIQ_CATEGORIES)
    assert sum(len(items) for items in loaded.galleries.values()) >= 90 and len(loaded.queries) == 30
    scenes = _scenes(root, "fashioniq", "val")
    for category, items in loaded.galleries.items():
        for item in items:
            scene = scenes[item.id]
            assert is_heldout(scene) and fashioniq_category(scene) == category
            assert scene.objects[0].shape == FASHIONIQ_CATEGORY_SHAPES[category]
    for category in FASHIONIQ_CATEGORIES:
        entries = json.loads((root / "captions" / f"cap.{category}.val.json").read_text())
        for entry in entries:
            first, second = entry["captions"]
            assert first != second
            assert scenes[entry["candidate"]] != scenes[entry["target"]]
    assert {query.category for query in loaded.queries} == set(FASHIONIQ_CATEGORIES)


def test_same_arguments_write_identical_files(tmp_path: Path) -> None:
    for name in ("one", "two"):
        write_world_dataset(
            "cirr", tmp_path / name, "val", gallery_size=30, num_queries=8, seed=4, image_size=32
        )

    def contents(root: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }

    one, two = contents(tmp_path / "one"), contents(tmp_path / "two")
    assert one == two and len(one) > 30
    write_world_dataset(
        "cirr", tmp_path / "three", "val", gallery_size=30, num_queries=8, seed=5, image_size=32
    )
    assert contents(tmp_path / "three") != one


def test_cli_writes_a_default_world_cirr_split_in_seconds(tmp_path: Path) -> None:
    started = time.perf_counter()
    assert cir(["synthetic-dataset", "--world", "--dataset", "cirr", "--out", str(tmp_path / "world")]) == 0
    elapsed = time.perf_counter() - started
    loaded = load_split(DatasetName.CIRR, tmp_path / "world", Split.VAL)
    assert len(loaded.galleries[""]) >= 1000 and len(loaded.queries) == 300
    assert elapsed < 60  # a few seconds on a quiet machine
    sizes = {item.path.stat().st_size for item in loaded.galleries[""][:5]}
    assert all(size > 0 for size in sizes)
    # Without --world: the evaluation package's small random-shapes split, unchanged.
    assert cir(["synthetic-dataset", "--dataset", "cirr", "--out", str(tmp_path / "plain")]) == 0
    plain = load_split(DatasetName.CIRR, tmp_path / "plain", Split.VAL)
    assert len(plain.galleries[""]) == 12 and len(plain.queries) == 4


def test_cli_overrides_sizes_and_image_size(tmp_path: Path) -> None:
    args = ["synthetic-dataset", "--world", "--dataset", "circo", "--split", "test", "--out", str(tmp_path)]
    assert cir([*args, "--gallery-size", "40", "--queries", "5", "--image-size", "32", "--seed", "7"]) == 0
    loaded = load_split(DatasetName.CIRCO, tmp_path, Split.TEST)
    assert len(loaded.queries) == 5 and len(loaded.galleries[""]) >= 40
    from PIL import Image

    with Image.open(loaded.galleries[""][0].path) as image:
        assert image.size == (32, 32)
