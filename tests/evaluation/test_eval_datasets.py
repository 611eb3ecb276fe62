"""Dataset loaders on the official layouts (via the synthetic writer) and their errors on broken folders."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cir_evaluation.datasets import DatasetError, describe_layout, load_split, parse_split
from cir_evaluation.model import FASHIONIQ_CATEGORIES, DatasetName, EvalSplit, Split
from cir_evaluation.synthetic import IMAGE_SIZE, write_synthetic_dataset

ALL = [(dataset, split) for dataset in DatasetName for split in Split]


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _check_gallery_files(loaded: EvalSplit) -> None:
    for items in loaded.galleries.values():
        assert items, "empty gallery"
        assert len({item.id for item in items}) == len(items)
        for item in items:
            assert item.path.is_file(), item.path


# --- round trips --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "split"), ALL, ids=[f"{d.value}-{s.value}" for d, s in ALL])
def test_synthetic_dataset_loads(tmp_path: Path, dataset: DatasetName, split: Split) -> None:
    root = write_synthetic_dataset(dataset, tmp_path / dataset.value, split, gallery_size=9, num_queries=5)
    loaded = load_split(dataset, root, split)
    assert loaded.dataset is dataset
    assert loaded.split is split
    assert loaded.root == root
    _check_gallery_files(loaded)
    if dataset is DatasetName.FASHIONIQ:
        assert set(loaded.galleries) == set(FASHIONIQ_CATEGORIES)
        assert len(loaded.queries) == 5 * len(FASHIONIQ_CATEGORIES)
    else:
        assert set(loaded.galleries) == {""}
        assert len(loaded.queries) == 5
    for query in loaded.queries:
        gallery_ids = {item.id for item in loaded.gallery_for(query)}
        assert query.reference_id in gallery_ids
        assert set(query.ground_truth) <= gallery_ids
        assert query.text
        if split is Split.TEST:
            assert query.ground_truth == ()
            assert query.target_id == ""
        else:
            assert query.ground_truth
            assert query.target_id == query.ground_truth[0]


def test_circo_fields(tmp_path: Path) -> None:
    root = write_synthetic_dataset(DatasetName.CIRCO, tmp_path, Split.VAL, gallery_size=10, num_queries=6)
    info = _json(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json")
    annotations = _json(root / "annotations" / "val.json")
    loaded = load_split("circo", root, "val")

    gallery = loaded.galleries[""]
    assert [item.id for item in gallery] == [str(image["id"]) for image in info["images"]]
    for item, image in zip(gallery, info["images"], strict=True):
        assert item.path == root / "COCO2017_unlabeled" / "unlabeled2017" / image["file_name"]
        assert image["file_name"] == f"{image['id']:012d}.jpg"
    assert len(loaded.queries) == len(annotations) == 6
    for query, entry in zip(loaded.queries, annotations, strict=True):
        assert query.id == str(entry["id"])
        assert query.reference_id == str(entry["reference_img_id"])
        assert query.text == entry["relative_caption"]  # the shared concept is kept apart, not prepended
        assert query.shared_concept == entry["shared_concept"]
        assert query.target_id == str(entry["target_img_id"])
        assert query.ground_truth == tuple(str(i) for i in entry["gt_img_ids"])
        assert len(query.ground_truth) >= 2
        assert query.semantic_aspects == tuple(entry["semantic_aspects"])
        assert query.semantic_aspects
        assert query.subset == ()
        assert query.category == ""
        assert loaded.image_path(query.reference_id) is not None


def test_circo_test_split_and_val_share_the_gallery(tmp_path: Path) -> None:
    write_synthetic_dataset("circo", tmp_path, "val")
    write_synthetic_dataset("circo", tmp_path, "test")
    val = load_split(DatasetName.CIRCO, tmp_path, Split.VAL)
    test = load_split(DatasetName.CIRCO, tmp_path, Split.TEST)
    assert val.galleries == test.galleries
    annotations = _json(tmp_path / "annotations" / "test.json")
    assert set(annotations[0]) == {"id", "reference_img_id", "relative_caption", "shared_concept"}
    for query, entry in zip(test.queries, annotations, strict=True):
        assert (query.id, query.reference_id, query.text, query.shared_concept) == (
            str(entry["id"]),
            str(entry["reference_img_id"]),
            entry["relative_caption"],
            entry["shared_concept"],
        )
        assert query.semantic_aspects == ()


def test_circo_val_without_semantic_aspects_loads(tmp_path: Path) -> None:
    # The first release of val.json had no semantic_aspects.
    root = write_synthetic_dataset("circo", tmp_path)
    path = root / "annotations" / "val.json"
    _dump(path, [{k: v for k, v in entry.items() if k != "semantic_aspects"} for entry in _json(path)])
    assert all(query.semantic_aspects == () for query in load_split("circo", root, "val").queries)


@pytest.mark.parametrize("split", list(Split), ids=[s.value for s in Split])
def test_cirr_fields(tmp_path: Path, split: Split) -> None:
    root = write_synthetic_dataset(DatasetName.CIRR, tmp_path, split, gallery_size=8, num_queries=5)
    name = "val" if split is Split.VAL else "test1"
    folder = "dev" if split is Split.VAL else "test1"
    relative = _json(root / "cirr" / "image_splits" / f"split.rc2.{name}.json")
    captions = _json(root / "cirr" / "captions" / f"cap.rc2.{name}.json")
    loaded = load_split(DatasetName.CIRR, root, split)

    gallery = loaded.galleries[""]
    assert [item.id for item in gallery] == list(relative)
    for item in gallery:
        assert relative[item.id] == f"./{folder}/{item.id}.png"
        assert item.path == root / folder / f"{item.id}.png"
    for query, entry in zip(loaded.queries, captions, strict=True):
        assert query.id == str(entry["pairid"])
        assert query.reference_id == entry["reference"]
        assert query.text == entry["caption"]
        assert query.subset == tuple(entry["img_set"]["members"])
        assert len(query.subset) == 6
        assert query.reference_id in query.subset
        if split is Split.VAL:
            assert query.target_id == entry["target_hard"]
            assert query.ground_truth == (entry["target_hard"],)
            assert query.target_id in query.subset
        else:
            assert "target_hard" not in entry
            assert (query.target_id, query.ground_truth) == ("", ())


def _cirr_official_layout(tmp_path: Path, split: Split) -> tuple[Path, Path]:
    """The synthetic CIRR moved into the CIRR README layout: <data>/cirr/{captions,image_splits,img_raw}."""
    built = write_synthetic_dataset("cirr", tmp_path / "built", split)
    cirr = tmp_path / "data" / "cirr"
    cirr.mkdir(parents=True)
    shutil.move(built / "cirr" / "captions", cirr / "captions")
    shutil.move(built / "cirr" / "image_splits", cirr / "image_splits")
    (cirr / "img_raw").mkdir()
    folder = "dev" if split is Split.VAL else "test1"
    shutil.move(built / folder, cirr / "img_raw" / folder)
    return built, cirr


@pytest.mark.parametrize("split", list(Split), ids=[s.value for s in Split])
def test_cirr_official_readme_layout(tmp_path: Path, split: Split) -> None:
    _, cirr = _cirr_official_layout(tmp_path, split)
    folder = "dev" if split is Split.VAL else "test1"
    for root in (cirr, cirr.parent):  # the cirr folder itself, or the folder holding it
        loaded = load_split("cirr", root, split)
        _check_gallery_files(loaded)
        for item in loaded.galleries[""]:
            assert item.path == cirr / "img_raw" / folder / f"{item.id}.png"


def test_cirr_annotation_folder_as_root_with_images_beside_it(tmp_path: Path) -> None:
    # SEARLE layout, but the user points at <root>/cirr: the images are found in its parent.
    root = write_synthetic_dataset("cirr", tmp_path, "val")
    loaded = load_split("cirr", root / "cirr", "val")
    assert loaded.galleries[""][0].path == root / "dev" / f"{loaded.galleries[''][0].id}.png"
    _check_gallery_files(loaded)


def test_fashioniq_fields(tmp_path: Path) -> None:
    root = write_synthetic_dataset(DatasetName.FASHIONIQ, tmp_path, Split.VAL, gallery_size=7, num_queries=4)
    loaded = load_split(DatasetName.FASHIONIQ, root, Split.VAL)
    assert list(loaded.galleries) == list(FASHIONIQ_CATEGORIES)
    suffixes: set[str] = set()
    for category in FASHIONIQ_CATEGORIES:
        ids = _json(root / "image_splits" / f"split.{category}.val.json")
        gallery = loaded.galleries[category]
        assert [item.id for item in gallery] == ids
        for item in gallery:
            assert item.path.parent == root / "images"
            assert item.path.stem == item.id
            suffixes.add(item.path.suffix)
        captions = _json(root / "captions" / f"cap.{category}.val.json")
        queries = [query for query in loaded.queries if query.category == category]
        assert len(queries) == len(captions) == 4
        for index, (query, entry) in enumerate(zip(queries, captions, strict=True)):
            first, second = entry["captions"]
            assert query.id == f"{category}/{index}"
            assert query.reference_id == entry["candidate"]
            assert query.target_id == entry["target"]
            assert query.ground_truth == (entry["target"],)
            assert query.text == f"{first.strip('.?, ')} and {second.strip('.?, ')}"
            assert query.subset == ()
            assert loaded.image_path(query.reference_id, category) is not None
    assert suffixes == {".png", ".jpg"}


def test_fashioniq_caption_join_is_exact(tmp_path: Path) -> None:
    root = write_synthetic_dataset("fashioniq", tmp_path, "val")
    path = root / "captions" / "cap.dress.val.json"
    entries = _json(path)
    entries[0]["captions"] = ["Is darker and shorter.", " has long sleeves?, "]
    entries[1]["captions"] = [" green", "is blue, with dots."]
    _dump(path, entries)
    loaded = load_split("fashioniq", root, "val")
    texts = {query.id: query.text for query in loaded.queries}
    assert texts["dress/0"] == "Is darker and shorter and has long sleeves"
    assert texts["dress/1"] == "green and is blue, with dots"


def test_fashioniq_test_split(tmp_path: Path) -> None:
    root = write_synthetic_dataset("fashioniq", tmp_path, "test", num_queries=3)
    loaded = load_split("fashioniq", root, "test")
    for category in FASHIONIQ_CATEGORIES:
        captions = _json(root / "captions" / f"cap.{category}.test.json")
        assert all("target" not in entry for entry in captions)
        queries = [query for query in loaded.queries if query.category == category]
        assert [query.reference_id for query in queries] == [entry["candidate"] for entry in captions]
        assert all(query.ground_truth == () and query.target_id == "" for query in queries)


def test_fashioniq_accepts_either_extension(tmp_path: Path) -> None:
    root = write_synthetic_dataset("fashioniq", tmp_path, "val")
    for image in sorted((root / "images").glob("*.png")):  # every image as .jpg now
        Image.open(image).convert("RGB").save(image.with_suffix(".jpg"))
        image.unlink()
    loaded = load_split("fashioniq", root, "val")
    assert {item.path.suffix for items in loaded.galleries.values() for item in items} == {".jpg"}


def test_fashioniq_duplicate_split_ids_are_listed_once(tmp_path: Path) -> None:
    root = write_synthetic_dataset("fashioniq", tmp_path, "val")
    path = root / "image_splits" / "split.shirt.val.json"
    ids = _json(path)
    _dump(path, [*ids, ids[0]])
    assert [item.id for item in load_split("fashioniq", root, "val").galleries["shirt"]] == ids


def test_synthetic_is_deterministic_and_images_distinct(tmp_path: Path) -> None:
    for dataset in DatasetName:
        first = write_synthetic_dataset(dataset, tmp_path / "a" / dataset.value, seed=3)
        second = write_synthetic_dataset(dataset, tmp_path / "b" / dataset.value, seed=3)
        files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
        for relative in files:
            assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
        other = write_synthetic_dataset(dataset, tmp_path / "c" / dataset.value, seed=4)
        assert load_split(dataset, other, "val").queries != load_split(dataset, first, "val").queries
    loaded = load_split("circo", tmp_path / "a" / "circo", "val")
    pixels = set()
    for item in loaded.galleries[""]:
        with Image.open(item.path) as image:
            assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
            pixels.add(image.convert("RGB").getpixel((0, 0)))
    assert len(pixels) == len(loaded.galleries[""])  # distinct backgrounds


def test_synthetic_rejects_a_too_small_gallery(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 6"):
        write_synthetic_dataset("cirr", tmp_path, gallery_size=5)


# --- splits and names ---------------------------------------------------------------------------------------


def test_split_names(tmp_path: Path) -> None:
    assert parse_split("cirr", "test1") is Split.TEST
    assert parse_split("circo", "VAL") is Split.VAL
    root = write_synthetic_dataset("cirr", tmp_path, "test")
    assert load_split("cirr", root, "test1").split is Split.TEST


@pytest.mark.parametrize(
    ("dataset", "split", "needle"),
    [
        ("cirr", "train", "'train' is not available for cirr"),
        ("circo", "test1", "'test1' is not available for circo"),
        ("fashioniq", "dev", "choose one of: val, test"),
    ],
)
def test_unavailable_split_is_a_clear_error(tmp_path: Path, dataset: str, split: str, needle: str) -> None:
    with pytest.raises(DatasetError, match=needle):
        load_split(dataset, tmp_path, split)


def test_unknown_dataset_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'coco'"):
        load_split("coco", tmp_path, "val")
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_split("circo", missing, "val")
    assert str(missing) in str(info.value)
    assert "image_info_unlabeled2017.json" in str(info.value)
    assert "image_info_unlabeled2017.json" in describe_layout("circo")


# --- broken folders -----------------------------------------------------------------------------------------

Corruption = Callable[[Path], tuple[Path, str]]


def _delete(relative: str, expectation: str) -> Corruption:
    def corrupt(root: Path) -> tuple[Path, str]:
        (root / relative).unlink()
        return root / relative, expectation

    return corrupt


def _write_text(relative: str, text: str, expectation: str) -> Corruption:
    def corrupt(root: Path) -> tuple[Path, str]:
        (root / relative).write_text(text, encoding="utf-8")
        return root / relative, expectation

    return corrupt


def _edit(relative: str, edit: Callable[[Any], Any], expectation: str) -> Corruption:
    def corrupt(root: Path) -> tuple[Path, str]:
        path = root / relative
        _dump(path, edit(_json(path)))
        return path, expectation

    return corrupt


def _drop_key(key: str, index: int = 0) -> Callable[[Any], Any]:
    def edit(entries: Any) -> Any:
        del entries[index][key]
        return entries

    return edit


def _set_key(key: str, value: Any, index: int = 0) -> Callable[[Any], Any]:
    def edit(entries: Any) -> Any:
        entries[index][key] = value
        return entries

    return edit


def _remove_first_image(listing: str) -> Corruption:
    """Delete the first image the listing file names; the error must name that image and the listing."""

    def corrupt(root: Path) -> tuple[Path, str]:
        data = _json(root / listing)
        if isinstance(data, dict) and "images" in data:  # CIRCO image info
            image = root / "COCO2017_unlabeled" / "unlabeled2017" / data["images"][0]["file_name"]
        elif isinstance(data, dict):  # CIRR split file
            image = root / next(iter(data.values()))
        else:  # FashionIQ split file
            image = next((root / "images").glob(f"{data[0]}.*"))
        image.unlink()
        return image.with_suffix("") if isinstance(data, list) else image, "missing on disk"

    return corrupt


CIRCO_VAL = "annotations/val.json"
CIRCO_INFO = "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
CIRR_CAPS = "cirr/captions/cap.rc2.val.json"
CIRR_SPLIT = "cirr/image_splits/split.rc2.val.json"
FIQ_CAPS = "captions/cap.toptee.val.json"
FIQ_SPLIT = "image_splits/split.shirt.val.json"

CORRUPTIONS: dict[str, tuple[DatasetName, Corruption]] = {
    "circo-missing-annotations": (
        DatasetName.CIRCO,
        _delete(CIRCO_VAL, "file not found; expected a JSON list"),
    ),
    "circo-missing-image-info": (DatasetName.CIRCO, _delete(CIRCO_INFO, 'whose "images" is a list')),
    "circo-invalid-json": (DatasetName.CIRCO, _write_text(CIRCO_VAL, '[{"id": 0,', "invalid JSON")),
    "circo-not-a-list": (DatasetName.CIRCO, _write_text(CIRCO_VAL, '{"id": 0}', "not a list")),
    "circo-lacks-reference": (
        DatasetName.CIRCO,
        _edit(CIRCO_VAL, _drop_key("reference_img_id", 1), "annotation entry 1 lacks 'reference_img_id'"),
    ),
    "circo-lacks-gt": (DatasetName.CIRCO, _edit(CIRCO_VAL, _drop_key("gt_img_ids"), "lacks 'gt_img_ids'")),
    "circo-info-lacks-images": (DatasetName.CIRCO, _write_text(CIRCO_INFO, '{"info": {}}', 'lacks "images"')),
    "circo-image-missing": (DatasetName.CIRCO, _remove_first_image(CIRCO_INFO)),
    "circo-reference-not-in-gallery": (
        DatasetName.CIRCO,
        _edit(
            CIRCO_VAL, _set_key("reference_img_id", 999_999_999), "999999999', which is not in the gallery"
        ),
    ),
    "circo-gt-not-in-gallery": (
        DatasetName.CIRCO,
        _edit(CIRCO_VAL, _set_key("gt_img_ids", [7]), "not in the gallery"),
    ),
    "cirr-missing-captions": (DatasetName.CIRR, _delete(CIRR_CAPS, "file not found; expected a JSON list")),
    "cirr-invalid-json": (DatasetName.CIRR, _write_text(CIRR_CAPS, "{not json", "invalid JSON")),
    "cirr-split-not-an-object": (
        DatasetName.CIRR,
        _write_text(CIRR_SPLIT, '["dev-1-0-img0"]', "not an object"),
    ),
    "cirr-lacks-target": (
        DatasetName.CIRR,
        _edit(CIRR_CAPS, _drop_key("target_hard", 2), "lacks 'target_hard'"),
    ),
    "cirr-lacks-img-set": (DatasetName.CIRR, _edit(CIRR_CAPS, _drop_key("img_set"), "lacks 'img_set'")),
    "cirr-image-missing": (DatasetName.CIRR, _remove_first_image(CIRR_SPLIT)),
    "cirr-reference-not-in-gallery": (
        DatasetName.CIRR,
        _edit(
            CIRR_CAPS,
            _set_key("reference", "dev-9999-0-img0"),
            "'dev-9999-0-img0', which is not in the gallery",
        ),
    ),
    "fiq-missing-captions": (DatasetName.FASHIONIQ, _delete(FIQ_CAPS, "keys target, candidate, captions")),
    "fiq-missing-split": (DatasetName.FASHIONIQ, _delete(FIQ_SPLIT, "expected a JSON list of image ids")),
    "fiq-invalid-json": (DatasetName.FASHIONIQ, _write_text(FIQ_SPLIT, '["B00', "invalid JSON")),
    "fiq-lacks-candidate": (
        DatasetName.FASHIONIQ,
        _edit(FIQ_CAPS, _drop_key("candidate"), "lacks 'candidate'"),
    ),
    "fiq-one-caption": (DatasetName.FASHIONIQ, _edit(FIQ_CAPS, _set_key("captions", ["is red"]), "not 2")),
    "fiq-image-missing": (DatasetName.FASHIONIQ, _remove_first_image(FIQ_SPLIT)),
    "fiq-reference-not-in-gallery": (
        DatasetName.FASHIONIQ,
        _edit(FIQ_CAPS, _set_key("candidate", "B000000000"), "'B000000000', which is not in the gallery"),
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_broken_dataset_raises_naming_the_file(tmp_path: Path, case: str) -> None:
    dataset, corrupt = CORRUPTIONS[case]
    root = write_synthetic_dataset(dataset, tmp_path, Split.VAL)
    path, expectation = corrupt(root)
    with pytest.raises(DatasetError) as info:
        load_split(dataset, root, Split.VAL)
    message = str(info.value)
    assert str(path) in message
    assert expectation in message
    assert "expected" in message
    assert isinstance(info.value, ValueError)


def test_missing_cirr_image_folder_names_where_it_looked(tmp_path: Path) -> None:
    root = write_synthetic_dataset("cirr", tmp_path, "val")
    shutil.rmtree(root / "dev")
    with pytest.raises(DatasetError) as info:
        load_split("cirr", root, "val")
    message = str(info.value)
    assert str(root / CIRR_SPLIT) in message
    assert str(root / "dev") in message
    assert "img_raw" in message


def test_missing_cirr_annotations_names_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_split("cirr", tmp_path, "test")
    message = str(info.value)
    assert str(tmp_path / "cirr" / "captions" / "cap.rc2.test1.json") in message
    assert str(tmp_path / "captions" / "cap.rc2.test1.json") in message


def test_reference_not_in_gallery_names_the_gallery_file(tmp_path: Path) -> None:
    root = write_synthetic_dataset("fashioniq", tmp_path, "val")
    _edit(FIQ_CAPS, _set_key("target", "B111111111", 1), "")(root)
    with pytest.raises(DatasetError) as info:
        load_split("fashioniq", root, "val")
    message = str(info.value)
    assert "caption entry 1 has target 'B111111111'" in message
    assert str(root / "image_splits" / "split.toptee.val.json") in message
