"""Write a tiny CIRCO / CIRR / FashionIQ split in the official layout, to try `cir eval` without the data.

`write_synthetic_dataset(dataset, root, split)` writes the same files `datasets.load_split` reads (and the
cheap extra fields the official files carry), with small, visually distinct images (solid backgrounds with a
simple shape, 48x48) that are deterministic given `seed`. It returns the folder to pass to `load_split`.

Layouts written (see `datasets` for the full description):
- CIRCO: `annotations/<split>.json`, `COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`,
  `COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg`.
- CIRR (the SEARLE / CIReVL layout): `cirr/captions/cap.rc2.<val|test1>.json`,
  `cirr/image_splits/split.rc2.<val|test1>.json`, images in `dev/` or `test1/` beside `cirr/`.
- FashionIQ: `captions/cap.<category>.<split>.json`, `image_splits/split.<category>.<split>.json` for every
  category, images `images/<ASIN>.png` and `images/<ASIN>.jpg` (alternating, to exercise both).

Writing another split (or the same one again) into the same root is safe: files shared by the splits (the
CIRCO image-info file, images) are extended, never shrunk.
"""

from __future__ import annotations

import colorsys
import json
import random
import string
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from cir_evaluation.model import FASHIONIQ_CATEGORIES, DatasetName, Split

__all__ = ["IMAGE_SIZE", "write_synthetic_dataset"]

IMAGE_SIZE = 48

_CIRR_SET_SIZE = 6

_SUBJECTS = ("a dog", "a red car", "a teddy bear", "two bikes", "a bowl of fruit", "a small boat", "a clock")
_CHANGES = (
    "is seen from the side",
    "has a blue background",
    "shows two of them",
    "is on a wooden table",
    "is shot in greyscale",
    "has a person next to it",
    "is smaller and centred",
)
_ASPECTS = (
    "cardinality",
    "addition",
    "negation",
    "direct_addressing",
    "compare_change",
    "comparative_statement",
    "statement_with_conjunction",
    "spatial_relations_background",
    "viewpoint",
)
_FASHION_CAPTIONS = (
    ("is darker.", "has longer sleeves"),
    (" is red with a pattern", "is more casual?"),
    ("Is lighter and shorter.", " has no print"),
    ("is blue, ", "has a collar."),
    ("has a graphic", "is black and white"),
)
_SHAPES = ("rectangle", "ellipse", "triangle")


def write_synthetic_dataset(
    dataset: DatasetName | str,
    root: Path | str,
    split: Split | str = Split.VAL,
    *,
    gallery_size: int = 12,
    num_queries: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny `dataset` `split` under `root` in the official layout; returns the root for `load_split`.

    `gallery_size` images (per category for FashionIQ) and `num_queries` queries (per category for FashionIQ).
    CIRR needs a gallery of at least 6 (an img_set has 6 members); the others at least 2 (CIRCO: 4, so that
    queries have several ground truths).
    """
    name = DatasetName(str(dataset))
    which = Split(str(split))
    minimum = {DatasetName.CIRCO: 4, DatasetName.CIRR: _CIRR_SET_SIZE, DatasetName.FASHIONIQ: 2}[name]
    if gallery_size < minimum:
        raise ValueError(f"gallery_size for {name} must be at least {minimum}, got {gallery_size}")
    if num_queries < 1:
        raise ValueError(f"num_queries must be at least 1, got {num_queries}")
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    if name is DatasetName.CIRCO:
        _write_circo(base, which, gallery_size, num_queries, seed)
    elif name is DatasetName.CIRR:
        _write_cirr(base, which, gallery_size, num_queries, seed)
    else:
        _write_fashioniq(base, which, gallery_size, num_queries, seed)
    return base


# --- images and files ---------------------------------------------------------------------------------------


def _image(index: int, count: int, rng: random.Random) -> Image.Image:
    """A solid background (hues evenly spread over the gallery, so every image differs) with one shape."""
    offset = rng.random()
    hue = (offset + index / max(count, 1)) % 1.0
    background = _rgb(hue, 0.55, 0.9)
    foreground = _rgb((hue + 0.5) % 1.0, 0.8, 0.35)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    size = rng.randint(16, 28)
    left = rng.randint(2, IMAGE_SIZE - size - 2)
    top = rng.randint(2, IMAGE_SIZE - size - 2)
    box = (left, top, left + size, top + size)
    shape = _SHAPES[index % len(_SHAPES)]
    if shape == "rectangle":
        draw.rectangle(box, fill=foreground)
    elif shape == "ellipse":
        draw.ellipse(box, fill=foreground)
    else:
        draw.polygon(
            [(left, top + size), (left + size // 2, top), (left + size, top + size)], fill=foreground
        )
    return image


def _rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _save_image(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG")


def _write_json(path: Path, data: Any, *, indent: int | None = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")


def _rng(seed: int, dataset: DatasetName, split: Split | None, part: str = "") -> random.Random:
    return random.Random(f"{seed}/{dataset.value}/{split.value if split else 'all'}/{part}")


# --- CIRCO --------------------------------------------------------------------------------------------------


def _write_circo(root: Path, split: Split, gallery_size: int, num_queries: int, seed: int) -> None:
    # The gallery (the COCO unlabeled set) is shared by val and test: it depends on the seed only.
    gallery_rng = _rng(seed, DatasetName.CIRCO, None, "gallery")
    ids = gallery_rng.sample(range(1, 581_930), gallery_size)
    coco = root / "COCO2017_unlabeled"
    info_path = coco / "annotations" / "image_info_unlabeled2017.json"
    images = _existing_coco_images(info_path)
    known = {image["id"] for image in images}
    for index, image_id in enumerate(ids):
        file_name = f"{image_id:012d}.jpg"
        _save_image(_image(index, gallery_size, gallery_rng), coco / "unlabeled2017" / file_name)
        if image_id not in known:
            images.append(
                {
                    "license": 1,
                    "file_name": file_name,
                    "coco_url": f"http://images.cocodataset.org/unlabeled2017/{file_name}",
                    "height": IMAGE_SIZE,
                    "width": IMAGE_SIZE,
                    "date_captured": "2013-11-14 11:18:45",
                    "id": image_id,
                }
            )
    info = {
        "info": {
            "description": "Synthetic stand-in for COCO 2017 Unlabeled Dataset (cir_evaluation)",
            "version": "1.0",
            "year": 2017,
        },
        "licenses": [{"url": "https://creativecommons.org/licenses/by/4.0/", "id": 1, "name": "CC BY 4.0"}],
        "images": images,
    }
    _write_json(info_path, info, indent=None)

    rng = _rng(seed, DatasetName.CIRCO, split)
    annotations: list[dict[str, Any]] = []
    for query_index in range(num_queries):
        reference = ids[query_index % gallery_size]
        others = [image_id for image_id in ids if image_id != reference]
        count = rng.randint(2, min(4, len(others)))
        ground_truth = rng.sample(others, count)
        relative_caption = _CHANGES[rng.randrange(len(_CHANGES))]
        shared_concept = _SUBJECTS[rng.randrange(len(_SUBJECTS))]
        if split is Split.VAL:
            aspects = rng.sample(_ASPECTS, rng.randint(1, 3))
            annotations.append(
                {
                    "reference_img_id": reference,
                    "target_img_id": ground_truth[0],  # the target is always the first ground truth
                    "relative_caption": relative_caption,
                    "shared_concept": shared_concept,
                    "gt_img_ids": ground_truth,
                    "id": query_index,
                    "semantic_aspects": aspects,
                }
            )
        else:
            annotations.append(
                {
                    "reference_img_id": reference,
                    "relative_caption": relative_caption,
                    "shared_concept": shared_concept,
                    "id": query_index,
                }
            )
    _write_json(root / "annotations" / f"{split.value}.json", annotations)


def _existing_coco_images(info_path: Path) -> list[dict[str, Any]]:
    if not info_path.is_file():
        return []
    try:
        images = json.loads(info_path.read_text(encoding="utf-8")).get("images", [])
    except (ValueError, AttributeError):
        return []
    return [image for image in images if isinstance(image, dict) and "id" in image]


# --- CIRR ---------------------------------------------------------------------------------------------------


def _write_cirr(root: Path, split: Split, gallery_size: int, num_queries: int, seed: int) -> None:
    split_name = "val" if split is Split.VAL else "test1"
    folder = "dev" if split is Split.VAL else "test1"
    rng = _rng(seed, DatasetName.CIRR, split)
    names: list[str] = []
    taken: set[str] = set()
    while len(names) < gallery_size:
        # NLVR2 names: <split>-<sentence>-<pair>-img<0|1>
        name = f"{folder}-{rng.randrange(1100)}-{rng.randrange(4)}-img{rng.randrange(2)}"
        if name not in taken:
            taken.add(name)
            names.append(name)
    relative_paths = {name: f"./{folder}/{name}.png" for name in names}
    for index, name in enumerate(names):
        _save_image(_image(index, gallery_size, rng), root / folder / f"{name}.png")
    annotation_dir = root / "cirr"
    _write_json(annotation_dir / "image_splits" / f"split.rc2.{split_name}.json", relative_paths, indent=None)

    entries: list[dict[str, Any]] = []
    pair_id = 12_000 + rng.randrange(100)
    for query_index in range(num_queries):
        reference = names[query_index % gallery_size]
        others = [name for name in names if name != reference]
        target = rng.choice(others)
        members = [reference, target, *rng.sample([n for n in others if n != target], _CIRR_SET_SIZE - 2)]
        rng.shuffle(members)
        caption = _CHANGES[rng.randrange(len(_CHANGES))]
        img_set: dict[str, Any] = {
            "id": query_index,
            "members": members,
            "reference_rank": members.index(reference),
        }
        entry: dict[str, Any] = {"pairid": pair_id + query_index, "reference": reference}
        if split is Split.VAL:
            img_set["target_rank"] = members.index(target)
            entry.update({"target_hard": target, "target_soft": {target: 1.0}})
        entry.update({"caption": caption, "img_set": img_set})
        entries.append(entry)
    _write_json(annotation_dir / "captions" / f"cap.rc2.{split_name}.json", entries, indent=None)


# --- FashionIQ ----------------------------------------------------------------------------------------------


def _asin(rng: random.Random) -> str:
    return "B" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(9))


def _write_fashioniq(root: Path, split: Split, gallery_size: int, num_queries: int, seed: int) -> None:
    for category in FASHIONIQ_CATEGORIES:
        rng = _rng(seed, DatasetName.FASHIONIQ, split, category)
        ids: list[str] = []
        while len(ids) < gallery_size:
            asin = _asin(rng)
            if asin not in ids:
                ids.append(asin)
        for index, asin in enumerate(ids):
            extension = ".png" if index % 2 == 0 else ".jpg"
            _save_image(_image(index, gallery_size, rng), root / "images" / f"{asin}{extension}")
        _write_json(root / "image_splits" / f"split.{category}.{split.value}.json", ids)

        entries: list[dict[str, Any]] = []
        for query_index in range(num_queries):
            candidate = ids[query_index % gallery_size]
            captions = list(_FASHION_CAPTIONS[rng.randrange(len(_FASHION_CAPTIONS))])
            if split is Split.VAL:
                target = rng.choice([asin for asin in ids if asin != candidate])
                entries.append({"target": target, "candidate": candidate, "captions": captions})
            else:
                entries.append({"candidate": candidate, "captions": captions})
        _write_json(root / "captions" / f"cap.{category}.{split.value}.json", entries)
