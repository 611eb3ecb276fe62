"""Read CIRCO, CIRR and FashionIQ splits from their official on-disk layouts into an `EvalSplit`.

Layouts (as the datasets' own READMEs and the SEARLE / CIReVL / LinCIR loaders read them):

CIRCO (`root` = the CIRCO folder)::

    annotations/{val,test}.json
    COCO2017_unlabeled/annotations/image_info_unlabeled2017.json  # "images": [{id, file_name, ...}]
    COCO2017_unlabeled/unlabeled2017/<file_name>

CIRR, either the layout SEARLE / CIReVL / LinCIR document (`root` holds `cirr/` and the NLVR2 image folders)::

    cirr/captions/cap.rc2.{val,test1}.json
    cirr/image_splits/split.rc2.{val,test1}.json   # {"dev-0-0-img0": "./dev/dev-0-0-img0.png", ...}
    dev/  test1/

or the CIRR README's own (`root` is the `cirr` folder, images under `img_raw/`)::

    captions/  image_splits/  img_raw/dev/  img_raw/test1/

The split files' relative paths are resolved against the first folder that holds the split's image
folder (`dev/` or `test1/`): `root`, `root/cirr/img_raw`, `root/img_raw`, `root/cirr` (first layout) or
`root/img_raw`, `root`, `root/..` (second). `Split.TEST` reads the `test1` files.

FashionIQ (`root` = the fashionIQ folder)::

    captions/cap.<category>.{val,test}.json        # val: [{target, candidate, captions[2]}]; test: no target
    image_splits/split.<category>.{val,test}.json  # ["B00006M009", ...]
    images/<id>.png  or  images/<id>.jpg           # published loaders use both; either is accepted

Everything is validated when the split is loaded (files, JSON shapes, keys, ids against the gallery,
that every gallery image exists on disk — existence only, no image is opened); any problem raises
`DatasetError` naming the file and what was expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cir_evaluation.model import (
    FASHIONIQ_CATEGORIES,
    DatasetName,
    EvalSplit,
    GalleryItem,
    Query,
    Split,
)

__all__ = ["DatasetError", "describe_layout", "load_split", "parse_split"]


class DatasetError(ValueError):
    """A dataset folder not in the official layout; the message names the file and what was expected."""


_LAYOUTS: dict[DatasetName, str] = {
    DatasetName.CIRCO: (
        "annotations/{val,test}.json, COCO2017_unlabeled/annotations/image_info_unlabeled2017.json and the "
        "images in COCO2017_unlabeled/unlabeled2017/"
    ),
    DatasetName.CIRR: (
        "cirr/captions/cap.rc2.{val,test1}.json, cirr/image_splits/split.rc2.{val,test1}.json and the "
        "image folders dev/, test1/ beside cirr/ (or, with the cirr folder itself as root: captions/, "
        "image_splits/, img_raw/dev/, img_raw/test1/)"
    ),
    DatasetName.FASHIONIQ: (
        "captions/cap.<category>.{val,test}.json, image_splits/split.<category>.{val,test}.json for the "
        "categories dress, shirt, toptee, and the images as images/<id>.png or images/<id>.jpg"
    ),
}

_CIRCO_VAL_KEYS = (
    "id",
    "reference_img_id",
    "target_img_id",
    "relative_caption",
    "shared_concept",
    "gt_img_ids",
)
_CIRCO_TEST_KEYS = ("id", "reference_img_id", "relative_caption", "shared_concept")
_CIRR_VAL_KEYS = ("pairid", "reference", "target_hard", "caption", "img_set")
_CIRR_TEST_KEYS = ("pairid", "reference", "caption", "img_set")
_FASHIONIQ_VAL_KEYS = ("target", "candidate", "captions")
_FASHIONIQ_TEST_KEYS = ("candidate", "captions")
_FASHIONIQ_EXTENSIONS = (".png", ".jpg")

_CAPTION_STRIP = ".?, "


def describe_layout(dataset: DatasetName | str) -> str:
    """One line naming the files `load_split` reads for `dataset` (for help texts and error messages)."""
    return _LAYOUTS[_parse_dataset(dataset)]


def parse_split(dataset: DatasetName | str, split: Split | str) -> Split:
    """`split` as a `Split`; CIRR also accepts its own name "test1". Anything else raises `DatasetError`."""
    name = _parse_dataset(dataset)
    if isinstance(split, Split):
        return split
    value = str(split).strip().lower()
    if name is DatasetName.CIRR and value == "test1":
        return Split.TEST
    try:
        return Split(value)
    except ValueError:
        choices = "val, test (CIRR's test reads the test1 files; test1 is accepted too)"
        if name is not DatasetName.CIRR:
            choices = "val, test"
        hint = " (train splits are not used by zero-shot evaluation)" if value == "train" else ""
        raise DatasetError(
            f"split {split!r} is not available for {name}{hint}; choose one of: {choices}"
        ) from None


def load_split(dataset: DatasetName | str, root: Path | str, split: Split | str) -> EvalSplit:
    """Read one split of `dataset` under `root` (official layout, see the module doc) into an `EvalSplit`.

    Galleries: CIRCO and CIRR one (key ""), FashionIQ one per category. Query texts are the dataset's own
    modification text (CIRCO `relative_caption`, CIRR `caption`, FashionIQ the two captions joined as
    `c1.strip('.?, ') + " and " + c2.strip('.?, ')`). Test splits have empty ground truths.
    """
    name = _parse_dataset(dataset)
    which = parse_split(name, split)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetError(f"{base}: dataset root not found; expected a folder holding {_LAYOUTS[name]}")
    if name is DatasetName.CIRCO:
        return _load_circo(base, which)
    if name is DatasetName.CIRR:
        return _load_cirr(base, which)
    return _load_fashioniq(base, which)


# --- shared helpers ----------------------------------------------------------------------------------------


def _parse_dataset(dataset: DatasetName | str) -> DatasetName:
    if isinstance(dataset, DatasetName):
        return dataset
    try:
        return DatasetName(str(dataset).strip().lower())
    except ValueError:
        names = ", ".join(d.value for d in DatasetName)
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of: {names}") from None


@dataclass(frozen=True)
class _File:
    """A JSON file being read, with what it should contain, so every error names both."""

    path: Path
    expected: str
    entry_noun: str = "entry"

    def error(self, problem: str) -> DatasetError:
        return DatasetError(f"{self.path}: {problem}; expected {self.expected}")

    def entry_error(self, index: int, problem: str) -> DatasetError:
        return self.error(f"{self.entry_noun} {index} {problem}")

    def read(self) -> Any:
        if not self.path.is_file():
            problem = "is a folder, not a file" if self.path.exists() else "file not found"
            raise self.error(problem)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self.error(f"cannot be read ({exc})") from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise self.error(f"invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc

    def read_list_of_objects(self) -> list[dict[str, Any]]:
        data = self.read()
        if not isinstance(data, list):
            raise self.error(f"the top level is a JSON {_json_type(data)}, not a list")
        for index, entry in enumerate(data):
            if not isinstance(entry, dict):
                raise self.entry_error(index, f"is a JSON {_json_type(entry)}, not an object")
        return data

    def field(self, entry: Mapping[str, Any], index: int, key: str) -> Any:
        if key not in entry:
            raise self.entry_error(index, f"lacks '{key}'")
        return entry[key]

    def text(self, entry: Mapping[str, Any], index: int, key: str) -> str:
        value = self.field(entry, index, key)
        if not isinstance(value, str):
            raise self.entry_error(index, f"has '{key}' = {value!r}, not a string")
        return value

    def image_id(self, entry: Mapping[str, Any], index: int, key: str) -> str:
        return self.as_id(self.field(entry, index, key), index, key)

    def as_id(self, value: Any, index: int, key: str) -> str:
        if isinstance(value, bool) or not isinstance(value, int | str) or str(value).strip() == "":
            raise self.entry_error(
                index, f"has '{key}' = {value!r}, not an id (an integer or a non-empty string)"
            )
        return str(value).strip()

    def id_list(self, entry: Mapping[str, Any], index: int, key: str) -> tuple[str, ...]:
        value = self.field(entry, index, key)
        if not isinstance(value, list) or not value:
            raise self.entry_error(index, f"has '{key}' = {value!r}, not a non-empty list of ids")
        return tuple(self.as_id(item, index, key) for item in value)

    def text_list(self, entry: Mapping[str, Any], index: int, key: str) -> tuple[str, ...]:
        value = self.field(entry, index, key)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.entry_error(index, f"has '{key}' = {value!r}, not a list of strings")
        return tuple(value)


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"


def _files_in(folder: Path) -> set[str]:
    """Names of the plain files in `folder` (one directory read instead of a stat per image)."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _require_on_disk(paths: Iterable[Path], listed_in: Path) -> None:
    """Raise naming the first image listed in `listed_in` that is not a file on disk."""
    listings: dict[Path, set[str]] = {}
    missing: list[Path] = []
    for path in paths:
        folder = path.parent
        if folder not in listings:
            listings[folder] = _files_in(folder)
        if path.name not in listings[folder]:
            missing.append(path)
    if missing:
        others = f" ({len(missing)} missing in all)" if len(missing) > 1 else ""
        raise DatasetError(
            f"{missing[0]}: image listed in {listed_in} but missing on disk{others}; "
            "expected every listed image to be on disk"
        )


def _unique_gallery(items: Sequence[GalleryItem], source: _File) -> tuple[GalleryItem, ...]:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise source.error(f"image id {item.id!r} is listed twice")
        seen.add(item.id)
    return tuple(items)


def _check_in_gallery(
    ids: Iterable[str], key: str, gallery_ids: set[str], source: _File, index: int, gallery_file: Path
) -> None:
    for image_id in ids:
        if image_id not in gallery_ids:
            raise source.entry_error(
                index, f"has {key} {image_id!r}, which is not in the gallery listed in {gallery_file}"
            )


def _unique_query_ids(queries: Sequence[Query], source: _File) -> None:
    seen: set[str] = set()
    for query in queries:
        if query.id in seen:
            raise source.error(f"query id {query.id!r} appears twice")
        seen.add(query.id)


# --- CIRCO --------------------------------------------------------------------------------------------------


def _load_circo(root: Path, split: Split) -> EvalSplit:
    coco = root / "COCO2017_unlabeled"
    info = _File(
        coco / "annotations" / "image_info_unlabeled2017.json",
        'a COCO image-info JSON object whose "images" is a list of objects with keys id, file_name',
        "image",
    )
    data = info.read()
    if not isinstance(data, dict):
        raise info.error(f"the top level is a JSON {_json_type(data)}, not an object")
    if "images" not in data:
        raise info.error('the object lacks "images"')
    images = data["images"]
    if not isinstance(images, list):
        raise info.error(f'"images" is a JSON {_json_type(images)}, not a list')
    image_dir = coco / "unlabeled2017"
    items: list[GalleryItem] = []
    for index, image in enumerate(images):
        if not isinstance(image, dict):
            raise info.entry_error(index, f"is a JSON {_json_type(image)}, not an object")
        file_name = info.text(image, index, "file_name")
        items.append(GalleryItem(id=info.image_id(image, index, "id"), path=image_dir / file_name))
    gallery = _unique_gallery(items, info)
    _require_on_disk((item.path for item in gallery), info.path)
    gallery_ids = {item.id for item in gallery}

    keys = _CIRCO_VAL_KEYS if split is Split.VAL else _CIRCO_TEST_KEYS
    expected = "a JSON list of objects with keys " + ", ".join(keys)
    if split is Split.VAL:
        expected += " (and semantic_aspects)"
    annotations = _File(root / "annotations" / f"{split.value}.json", expected, "annotation entry")
    queries: list[Query] = []
    for index, entry in enumerate(annotations.read_list_of_objects()):
        for key in keys:
            annotations.field(entry, index, key)
        reference = annotations.image_id(entry, index, "reference_img_id")
        _check_in_gallery([reference], "reference_img_id", gallery_ids, annotations, index, info.path)
        target = ""
        ground_truth: tuple[str, ...] = ()
        aspects: tuple[str, ...] = ()
        if split is Split.VAL:
            target = annotations.image_id(entry, index, "target_img_id")
            ground_truth = annotations.id_list(entry, index, "gt_img_ids")
            _check_in_gallery([target], "target_img_id", gallery_ids, annotations, index, info.path)
            _check_in_gallery(ground_truth, "a gt_img_ids id", gallery_ids, annotations, index, info.path)
            if "semantic_aspects" in entry:  # absent from the first release of val.json
                aspects = annotations.text_list(entry, index, "semantic_aspects")
        queries.append(
            Query(
                id=annotations.image_id(entry, index, "id"),
                reference_id=reference,
                text=annotations.text(entry, index, "relative_caption"),
                target_id=target,
                ground_truth=ground_truth,
                semantic_aspects=aspects,
                shared_concept=annotations.text(entry, index, "shared_concept"),
            )
        )
    _unique_query_ids(queries, annotations)
    return EvalSplit(DatasetName.CIRCO, split, root, {"": gallery}, tuple(queries))


# --- CIRR ---------------------------------------------------------------------------------------------------


def _cirr_locations(root: Path, split_name: str) -> tuple[Path, list[Path]]:
    """The folder holding captions/ and image_splits/, and the folders to resolve image paths against."""
    nested = root / "cirr"
    if (nested / "captions").is_dir() or (nested / "image_splits").is_dir():
        return nested, [root, nested / "img_raw", root / "img_raw", nested]
    if (root / "captions").is_dir() or (root / "image_splits").is_dir():
        return root, [root / "img_raw", root, root.parent]
    caption_file = f"captions/cap.rc2.{split_name}.json"
    raise DatasetError(
        f"{nested / caption_file}: file not found (nor {root / caption_file}); expected the CIRR annotations "
        f"(captions/, image_splits/) in {nested} or in {root} itself, i.e. {_LAYOUTS[DatasetName.CIRR]}"
    )


def _load_cirr(root: Path, split: Split) -> EvalSplit:
    split_name = "val" if split is Split.VAL else "test1"
    annotation_dir, image_bases = _cirr_locations(root, split_name)

    split_file = _File(
        annotation_dir / "image_splits" / f"split.rc2.{split_name}.json",
        f'a JSON object mapping each image name to its relative path, e.g. "./{_cirr_folder(split_name)}/'
        f'{_cirr_folder(split_name)}-0-0-img0.png"',
        "image",
    )
    mapping = split_file.read()
    if not isinstance(mapping, dict):
        raise split_file.error(f"the top level is a JSON {_json_type(mapping)}, not an object")
    if not mapping:
        raise split_file.error("it lists no images")
    for name, relative in mapping.items():
        if not isinstance(relative, str) or not relative.strip():
            raise split_file.error(f"image {name!r} maps to {relative!r}, not a relative path")
    image_base = _cirr_image_base(mapping, image_bases, split_file)
    gallery = tuple(GalleryItem(id=name, path=image_base / relative) for name, relative in mapping.items())
    _require_on_disk((item.path for item in gallery), split_file.path)
    gallery_ids = set(mapping)

    keys = _CIRR_VAL_KEYS if split is Split.VAL else _CIRR_TEST_KEYS
    captions = _File(
        annotation_dir / "captions" / f"cap.rc2.{split_name}.json",
        "a JSON list of objects with keys "
        + ", ".join(keys)
        + " (img_set: an object with members, a list of 6 "
        "image names)",
        "caption entry",
    )
    queries: list[Query] = []
    for index, entry in enumerate(captions.read_list_of_objects()):
        for key in keys:
            captions.field(entry, index, key)
        reference = captions.image_id(entry, index, "reference")
        _check_in_gallery([reference], "reference", gallery_ids, captions, index, split_file.path)
        img_set = entry["img_set"]
        if not isinstance(img_set, dict):
            raise captions.entry_error(index, f"has 'img_set' = {img_set!r}, not an object")
        members = captions.id_list(img_set, index, "members")
        _check_in_gallery(members, "an img_set member", gallery_ids, captions, index, split_file.path)
        target = ""
        if split is Split.VAL:
            target = captions.image_id(entry, index, "target_hard")
            _check_in_gallery([target], "target_hard", gallery_ids, captions, index, split_file.path)
        queries.append(
            Query(
                id=captions.image_id(entry, index, "pairid"),
                reference_id=reference,
                text=captions.text(entry, index, "caption"),
                target_id=target,
                ground_truth=(target,) if target else (),
                subset=members,
            )
        )
    _unique_query_ids(queries, captions)
    return EvalSplit(DatasetName.CIRR, split, root, {"": gallery}, tuple(queries))


def _cirr_folder(split_name: str) -> str:
    return "dev" if split_name == "val" else split_name


def _cirr_image_base(mapping: Mapping[str, str], bases: Sequence[Path], split_file: _File) -> Path:
    """The first candidate folder that holds the top folder of the split's relative paths (e.g. `dev/`)."""
    first = Path(next(iter(mapping.values())))
    if first.is_absolute():
        return Path(first.anchor)
    parts = [part for part in first.parts if part not in (".", "")]
    top = parts[0] if len(parts) > 1 else ""
    seen: list[Path] = []
    for base in bases:
        if base in seen:
            continue
        seen.append(base)
        if (base / top).is_dir() if top else (base / first).is_file():
            return base
    looked = ", ".join(str(base / top) if top else str(base / first) for base in seen)
    raise DatasetError(
        f"{split_file.path}: the images' folder for relative paths like {str(first)!r} was not found "
        f"(looked for {looked}); expected the NLVR2 image folders (dev/, test1/) beside cirr/ or in "
        "cirr/img_raw/"
    )


# --- FashionIQ ----------------------------------------------------------------------------------------------


def _join_captions(first: str, second: str) -> str:
    """FashionIQ's two relative captions as one text (method.md 3.7; as CIReVL / SEARLE join them)."""
    return first.strip(_CAPTION_STRIP) + " and " + second.strip(_CAPTION_STRIP)


def _load_fashioniq(root: Path, split: Split) -> EvalSplit:
    image_dir = root / "images"
    on_disk = _files_in(image_dir)
    galleries: dict[str, tuple[GalleryItem, ...]] = {}
    queries: list[Query] = []
    for category in FASHIONIQ_CATEGORIES:
        split_file = _File(
            root / "image_splits" / f"split.{category}.{split.value}.json",
            "a JSON list of image ids (ASINs)",
            "id",
        )
        ids = split_file.read()
        if not isinstance(ids, list):
            raise split_file.error(f"the top level is a JSON {_json_type(ids)}, not a list")
        items: list[GalleryItem] = []
        seen: set[str] = set()
        for index, value in enumerate(ids):
            image_id = split_file.as_id(value, index, "id")
            if image_id in seen:  # keep the first; a gallery of unique ids keeps rankings unique
                continue
            seen.add(image_id)
            items.append(
                GalleryItem(id=image_id, path=_fashioniq_image(image_dir, image_id, on_disk, split_file))
            )
        galleries[category] = tuple(items)

        keys = _FASHIONIQ_VAL_KEYS if split is Split.VAL else _FASHIONIQ_TEST_KEYS
        captions = _File(
            root / "captions" / f"cap.{category}.{split.value}.json",
            "a JSON list of objects with keys " + ", ".join(keys) + " (captions: a list of 2 strings)",
            "caption entry",
        )
        for index, entry in enumerate(captions.read_list_of_objects()):
            for key in keys:
                captions.field(entry, index, key)
            reference = captions.image_id(entry, index, "candidate")
            _check_in_gallery([reference], "candidate", seen, captions, index, split_file.path)
            texts = captions.text_list(entry, index, "captions")
            if len(texts) != 2:
                raise captions.entry_error(index, f"has {len(texts)} captions, not 2")
            target = ""
            if split is Split.VAL:
                target = captions.image_id(entry, index, "target")
                _check_in_gallery([target], "target", seen, captions, index, split_file.path)
            queries.append(
                Query(
                    id=f"{category}/{index}",
                    reference_id=reference,
                    text=_join_captions(texts[0], texts[1]),
                    target_id=target,
                    ground_truth=(target,) if target else (),
                    category=category,
                )
            )
    return EvalSplit(DatasetName.FASHIONIQ, split, root, galleries, tuple(queries))


def _fashioniq_image(image_dir: Path, image_id: str, on_disk: set[str], split_file: _File) -> Path:
    for extension in _FASHIONIQ_EXTENSIONS:
        if image_id + extension in on_disk:
            return image_dir / (image_id + extension)
    raise DatasetError(
        f"{image_dir / image_id}.{{png,jpg}}: image listed in {split_file.path} but missing on disk; "
        f"expected {image_dir / image_id}.png or {image_dir / image_id}.jpg"
    )
