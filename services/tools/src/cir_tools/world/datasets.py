"""Held-out evaluation splits from the world, in the official CIRCO / CIRR / FashionIQ layouts.

`write_world_dataset` writes the same files `cir_evaluation.datasets.load_split` reads (see
`cir_evaluation.synthetic` for the layouts), but every image is a rendered world scene and every query a world
modification, so a trained suite can be scored on them. Only heldout scenes are used (references, targets,
distractors and filler alike); `world_scenes.<dataset>.<split>.json` at the root records each image's scene
and each query's kind (for audits and reports; the readers ignore it; see `scenes_file`).

- CIRR: each query's img_set is the reference (itself the first kind of hard distractor), the target, one
  distractor of each other hard kind that exists for its modification (wrong object, partial change, extra
  change), completed to six by one-attribute neighbours of the target or reference, so recall_subset
  measures exactly the hard part. val and test1.
- CIRCO: the ground truths of a query are several renderings (`variant`s) of its target scene; the gallery
  holds the distractors and filler too. val and test (one shared image-info file, as in the real CIRCO).
- FashionIQ: three categories by the shape of the leftmost object, written under the names the reader expects:
  circle -> "dress", square -> "shirt", triangle -> "toptee" (scenes led by a star are not used); queries keep
  their category, and carry two phrasings of the same change as the two relative captions.

`gallery_size` and `num_queries` are per split (FashionIQ: split evenly over the three categories, rounded
up); the gallery is at least `gallery_size` images, more when the queries' own images need more room.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cir_evaluation.model import FASHIONIQ_CATEGORIES, DatasetName, Split
from cir_tools.world.corpus import HELDOUT, is_heldout, sample_scene_in
from cir_tools.world.edits import (
    DISTRACTOR_KINDS,
    DISTRACTOR_REFERENCE,
    KIND_ADD,
    KIND_BACKGROUND,
    KIND_COLOUR,
    KIND_COUNT,
    KIND_REMOVE,
    KIND_SHAPE,
    KIND_SIZE,
    KIND_SPATIAL,
    MODIFICATION_KINDS,
    Modification,
    distractor_candidates,
    modification_kinds_for,
    sample_modification,
)
from cir_tools.world.language import background_phrase, canonical_caption, noun_phrase
from cir_tools.world.render import render
from cir_tools.world.scene import BACKGROUNDS, COLOURS, SHAPES, SIZES, TEXTURES, Scene, WorldObject

__all__ = [
    "DEFAULT_GALLERY_SIZE",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_NUM_QUERIES",
    "FASHIONIQ_CATEGORY_SHAPES",
    "WorldQuery",
    "fashioniq_category",
    "scene_from_record",
    "scene_record",
    "scenes_file",
    "write_world_dataset",
]

DEFAULT_GALLERY_SIZE = 1000
DEFAULT_NUM_QUERIES = 300
DEFAULT_IMAGE_SIZE = 64

# FashionIQ's reader knows only its own three category names; the world's categories are mapped onto them.
FASHIONIQ_CATEGORY_SHAPES: dict[str, str] = {"dress": "circle", "shirt": "square", "toptee": "triangle"}

_CIRR_SET_SIZE = 6
# Renderings per CIRCO target (its ground truths) and the variants images are drawn from.
_CIRCO_MIN_GROUND_TRUTHS = 2
_CIRCO_MAX_GROUND_TRUTHS = 4
_VARIANTS = 8
_MAX_DRAWS = 10_000
# Draws per query that insist on every existing hard-distractor kind being available among heldout scenes.
_PATIENCE = 400

# CIRCO annotates each query with the semantic aspects it exercises; the world's kinds map onto them.
_CIRCO_ASPECTS: dict[str, tuple[str, ...]] = {
    KIND_COLOUR: ("direct_addressing",),
    KIND_SHAPE: ("direct_addressing", "compare_change"),
    KIND_SIZE: ("comparative_statement",),
    KIND_BACKGROUND: ("spatial_relations_background",),
    KIND_ADD: ("addition",),
    KIND_REMOVE: ("negation",),
    KIND_COUNT: ("cardinality", "addition"),
    KIND_SPATIAL: ("spatial_relations_background",),
}


@dataclass(frozen=True)
class WorldQuery:
    """A heldout modification with the scenes it is tested against: hard distractors first, then fillers."""

    modification: Modification
    distractors: tuple[Scene, ...]
    distractor_kinds: tuple[str, ...]  # the kind of each hard distractor; the fillers have none


# --- scenes as records -------------------------------------------------------------------------------------


def scene_record(scene: Scene) -> dict[str, Any]:
    return {
        "caption": canonical_caption(scene),
        "background": scene.background,
        "texture": scene.texture,
        "objects": [
            {"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position}
            for o in scene.objects
        ],
    }


def scene_from_record(record: dict[str, Any]) -> Scene:
    objects = [WorldObject(**item) for item in record["objects"]]
    return Scene.of(objects, record["background"], record["texture"])


def scenes_file(root: Path | str, dataset: DatasetName | str, split: Split | str) -> Path:
    """Where `write_world_dataset` records a split's scenes: {"images": {image id: scene record with its
    "variant" (FashionIQ: and "category")}, "queries": [{"id", "kind", "text", "distractor_kinds"}]}."""
    return Path(root) / f"world_scenes.{DatasetName(str(dataset)).value}.{Split(str(split)).value}.json"


def fashioniq_category(scene: Scene) -> str | None:
    """The FashionIQ category a scene belongs to (by its leftmost object's shape), None when none."""
    leading = scene.objects[0].shape
    for category, shape in FASHIONIQ_CATEGORY_SHAPES.items():
        if shape == leading:
            return category
    return None


# --- queries -----------------------------------------------------------------------------------------------


def _neighbours(scene: Scene) -> list[Scene]:
    """Every scene one attribute away from `scene` (an object's colour, shape or size, or the background)."""
    found: list[Scene] = []
    for item in scene.objects:
        others = [o for o in scene.objects if o != item]
        variants = [WorldObject(s, item.colour, item.size, item.position) for s in SHAPES if s != item.shape]
        variants += [
            WorldObject(item.shape, c, item.size, item.position) for c in COLOURS if c != item.colour
        ]
        variants += [WorldObject(item.shape, item.colour, s, item.position) for s in SIZES if s != item.size]
        found += [Scene.of([*others, variant], scene.background, scene.texture) for variant in variants]
    found += [Scene.of(scene.objects, b, scene.texture) for b in BACKGROUNDS if b != scene.background]
    found += [Scene.of(scene.objects, scene.background, t) for t in TEXTURES if t != scene.texture]
    return found


def _heldout_queries(
    count: int,
    distractor_count: int,
    rng: random.Random,
    accept: Callable[[Scene], bool],
) -> list[WorldQuery]:
    """`count` distinct modifications among accepted heldout scenes, each with `distractor_count` distractors:
    one hard distractor of each kind that exists, then one-attribute neighbours, then any accepted scene.

    Kinds take turns, so every kind is equally represented. A draw is kept only when every hard-distractor
    kind that exists for it has an accepted (heldout) instance; after `_PATIENCE` draws for one query the
    first valid draw is kept anyway. The reference, itself a hard distractor, is always shown with its query,
    so it is not among the distractors.
    """
    order = list(MODIFICATION_KINDS)
    rng.shuffle(order)
    queries: list[WorldQuery] = []
    seen: set[tuple[Scene, Scene]] = set()
    while len(queries) < count:
        kind = order[len(queries) % len(order)]
        for attempt in range(_MAX_DRAWS):
            query = _draw_query(kind, distractor_count, rng, accept, seen, complete=attempt < _PATIENCE)
            if query is not None:
                seen.add((query.modification.reference, query.modification.target))
                queries.append(query)
                break
        else:
            raise RuntimeError(f"found only {len(queries)} of {count} heldout queries")
    return queries


def _draw_query(
    kind: str,
    distractor_count: int,
    rng: random.Random,
    accept: Callable[[Scene], bool],
    seen: set[tuple[Scene, Scene]],
    *,
    complete: bool,
) -> WorldQuery | None:
    """One try at a query of `kind`; None when the draw is unusable (or, `complete`, lacks a hard kind)."""
    reference = sample_scene_in(HELDOUT, rng)
    if not accept(reference) or kind not in modification_kinds_for(reference):
        return None
    modification = sample_modification(reference, rng, (kind,))
    target = modification.target
    if not accept(target) or (reference, target) in seen:
        return None
    chosen: list[Scene] = []
    kinds: list[str] = []
    candidates = distractor_candidates(modification)
    for distractor_kind in DISTRACTOR_KINDS:
        if distractor_kind == DISTRACTOR_REFERENCE:
            continue
        usable = [scene for scene in candidates[distractor_kind] if accept(scene) and scene not in chosen]
        if candidates[distractor_kind] and not usable and complete:
            return None
        if usable and len(chosen) < distractor_count:
            chosen.append(rng.choice(usable))
            kinds.append(distractor_kind)
    fillers = [scene for scene in _neighbours(target) + _neighbours(reference) if accept(scene)]
    rng.shuffle(fillers)
    for scene in fillers:
        if len(chosen) == distractor_count:
            break
        if scene not in chosen and scene not in (reference, target):
            chosen.append(scene)
    while len(chosen) < distractor_count:
        scene = sample_scene_in(HELDOUT, rng)
        if accept(scene) and scene not in chosen and scene not in (reference, target):
            chosen.append(scene)
    return WorldQuery(modification, tuple(chosen), tuple(kinds))


def _heldout(scene: Scene) -> bool:
    return is_heldout(scene)


# --- galleries ---------------------------------------------------------------------------------------------


@dataclass
class _Gallery:
    """Images of heldout scenes by id; a scene keeps the images it was given (one or several renderings)."""

    name_for: Callable[[int], str]
    rng: random.Random
    images: dict[str, tuple[Scene, int]] = field(default_factory=dict)
    by_scene: dict[Scene, list[str]] = field(default_factory=dict)

    def renderings(self, scene: Scene, count: int = 1) -> list[str]:
        """Ids of at least `count` renderings of `scene`, adding images with unused variants as needed."""
        if not is_heldout(scene):  # the datasets must never show a trained-on scene
            raise ValueError(f"train scene in a heldout gallery: {canonical_caption(scene)}")
        ids = self.by_scene.setdefault(scene, [])
        used = {self.images[image_id][1] for image_id in ids}
        free = [variant for variant in range(_VARIANTS) if variant not in used]
        self.rng.shuffle(free)
        while len(ids) < count:
            image_id = self.name_for(len(self.images))
            self.images[image_id] = (scene, free.pop())
            ids.append(image_id)
        return ids[:count] if count > 1 else ids[:1]

    def image(self, scene: Scene) -> str:
        return self.renderings(scene, 1)[0]

    def fill(self, size: int, accept: Callable[[Scene], bool]) -> None:
        """Add one rendering of new accepted heldout scenes until the gallery holds `size` images."""
        for _ in range(size * _MAX_DRAWS):
            if len(self.images) >= size:
                return
            scene = sample_scene_in(HELDOUT, self.rng)
            if accept(scene) and scene not in self.by_scene:
                self.image(scene)
        raise RuntimeError(f"could not fill a gallery of {size} images")

    def write(self, folder: Path, image_size: int, file_name: Callable[[str], str] = "{}.png".format) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for image_id, (scene, variant) in self.images.items():
            render(scene, size=image_size, variant=variant).save(folder / file_name(image_id), format="PNG")

    def records(self) -> dict[str, dict[str, Any]]:
        return {
            image_id: {**scene_record(scene), "variant": variant}
            for image_id, (scene, variant) in self.images.items()
        }


def _query_record(query_id: str, query: WorldQuery) -> dict[str, Any]:
    """What the scenes file says of a query (its id as the evaluation reader names it)."""
    return {
        "id": query_id,
        "kind": query.modification.kind,
        "text": query.modification.text,
        "distractor_kinds": list(query.distractor_kinds),
    }


def _write_json(path: Path, data: Any, *, indent: int | None = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")


def _split_rng(seed: int, dataset: DatasetName, split: Split, part: str = "") -> random.Random:
    return random.Random(f"world/{seed}/{dataset.value}/{split.value}/{part}")


def _shared_concept(modification: Modification) -> str:
    """What reference and target share (CIRCO's shared_concept): an untouched object, else the background."""
    for item in modification.reference.objects:
        if item in modification.target.objects:
            return noun_phrase(item, size=False)
    return background_phrase(modification.reference)


# --- CIRCO --------------------------------------------------------------------------------------------------


def _write_circo(
    root: Path, split: Split, gallery_size: int, num_queries: int, seed: int, image_size: int
) -> None:
    rng = _split_rng(seed, DatasetName.CIRCO, split)
    # val and test share one image-info file (as in CIRCO); distinct id ranges keep their images apart.
    first_id = 1_000_000 if split is Split.VAL else 2_000_000
    gallery = _Gallery(name_for=lambda index: str(first_id + index), rng=rng)
    queries = _heldout_queries(num_queries, 4, rng, _heldout)
    plans = []
    for query in queries:
        modification = query.modification
        reference = gallery.image(modification.reference)
        wanted = rng.randint(_CIRCO_MIN_GROUND_TRUTHS, _CIRCO_MAX_GROUND_TRUTHS)
        gallery.renderings(modification.target, wanted)
        for scene in query.distractors:
            gallery.image(scene)
        plans.append((reference, modification))
    gallery.fill(gallery_size, _heldout)

    coco = root / "COCO2017_unlabeled"
    gallery.write(coco / "unlabeled2017", image_size, file_name=_coco_file_name)
    info_path = coco / "annotations" / "image_info_unlabeled2017.json"
    images = {entry["id"]: entry for entry in _existing_images(info_path)}
    for image_id in gallery.images:
        images[int(image_id)] = {
            "license": 1,
            "file_name": _coco_file_name(image_id),
            "height": image_size,
            "width": image_size,
            "id": int(image_id),
        }
    info = {
        "info": {"description": "CIRCO-layout split of the synthetic scene world (cir_tools.world)"},
        "licenses": [{"id": 1, "name": "generated"}],
        "images": [images[key] for key in sorted(images)],
    }
    _write_json(info_path, info, indent=None)

    annotations: list[dict[str, Any]] = []
    for index, (reference, modification) in enumerate(plans):
        entry: dict[str, Any] = {
            "reference_img_id": int(reference),
            "relative_caption": modification.text,
            "shared_concept": _shared_concept(modification),
            "id": index,
        }
        if split is Split.VAL:
            # Every rendering of the target scene satisfies the text: all are ground truths.
            ground_truth = [int(image_id) for image_id in gallery.by_scene[modification.target]]
            entry["target_img_id"] = ground_truth[0]
            entry["gt_img_ids"] = ground_truth
            entry["semantic_aspects"] = list(_CIRCO_ASPECTS[modification.kind])
        annotations.append(entry)
    _write_json(root / "annotations" / f"{split.value}.json", annotations)
    described = [_query_record(str(index), query) for index, query in enumerate(queries)]
    _write_json(
        scenes_file(root, DatasetName.CIRCO, split), {"images": gallery.records(), "queries": described}
    )


def _coco_file_name(image_id: str) -> str:
    return f"{int(image_id):012d}.png"


def _existing_images(info_path: Path) -> list[dict[str, Any]]:
    if not info_path.is_file():
        return []
    try:
        images = json.loads(info_path.read_text(encoding="utf-8")).get("images", [])
    except (ValueError, AttributeError):
        return []
    return [image for image in images if isinstance(image, dict) and isinstance(image.get("id"), int)]


# --- CIRR ---------------------------------------------------------------------------------------------------


def _write_cirr(
    root: Path, split: Split, gallery_size: int, num_queries: int, seed: int, image_size: int
) -> None:
    split_name = "val" if split is Split.VAL else "test1"
    folder = "dev" if split is Split.VAL else "test1"
    rng = _split_rng(seed, DatasetName.CIRR, split)
    # NLVR2-style names: <folder>-<pair>-<sentence>-img<0|1>.
    gallery = _Gallery(name_for=lambda index: f"{folder}-{index // 2}-0-img{index % 2}", rng=rng)
    queries = _heldout_queries(num_queries, _CIRR_SET_SIZE - 2, rng, _heldout)
    entries: list[dict[str, Any]] = []
    for index, query in enumerate(queries):
        modification = query.modification
        reference = gallery.image(modification.reference)
        target = gallery.image(modification.target)
        members = [reference, target, *(gallery.image(scene) for scene in query.distractors)]
        rng.shuffle(members)
        img_set: dict[str, Any] = {
            "id": index,
            "members": members,
            "reference_rank": members.index(reference),
        }
        entry: dict[str, Any] = {"pairid": index, "reference": reference}
        if split is Split.VAL:
            img_set["target_rank"] = members.index(target)
            entry.update({"target_hard": target, "target_soft": {target: 1.0}})
        entry.update({"caption": modification.text, "img_set": img_set})
        entries.append(entry)
    gallery.fill(gallery_size, _heldout)
    gallery.write(root / folder, image_size)
    annotation_dir = root / "cirr"
    relative_paths = {name: f"./{folder}/{name}.png" for name in gallery.images}
    _write_json(annotation_dir / "image_splits" / f"split.rc2.{split_name}.json", relative_paths, indent=None)
    _write_json(annotation_dir / "captions" / f"cap.rc2.{split_name}.json", entries, indent=None)
    described = [_query_record(str(index), query) for index, query in enumerate(queries)]
    _write_json(
        scenes_file(root, DatasetName.CIRR, split), {"images": gallery.records(), "queries": described}
    )


# --- FashionIQ ----------------------------------------------------------------------------------------------


def _asin_namer(rng: random.Random, taken: set[str]) -> Callable[[int], str]:
    def name(_: int) -> str:
        while True:
            asin = "B" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(9))
            if asin not in taken:
                taken.add(asin)
                return asin

    return name


def _write_fashioniq(
    root: Path, split: Split, gallery_size: int, num_queries: int, seed: int, image_size: int
) -> None:
    categories = len(FASHIONIQ_CATEGORIES)
    per_category_gallery = -(-gallery_size // categories)
    per_category_queries = -(-num_queries // categories)
    taken: set[str] = set()
    records: dict[str, dict[str, Any]] = {}
    described: list[dict[str, Any]] = []
    for category in FASHIONIQ_CATEGORIES:
        rng = _split_rng(seed, DatasetName.FASHIONIQ, split, category)

        def in_category(scene: Scene, wanted: str = category) -> bool:
            return fashioniq_category(scene) == wanted and is_heldout(scene)

        gallery = _Gallery(name_for=_asin_namer(rng, taken), rng=rng)
        queries = _heldout_queries(per_category_queries, 4, rng, in_category)
        entries: list[dict[str, Any]] = []
        for index, query in enumerate(queries):
            described.append(_query_record(f"{category}/{index}", query))
            modification = query.modification
            candidate = gallery.image(modification.reference)
            target = gallery.image(modification.target)
            for scene in query.distractors:
                gallery.image(scene)
            others = [text for text in modification.phrasings if text != modification.text]
            captions = [modification.text, rng.choice(others)]
            entry: dict[str, Any] = {"candidate": candidate, "captions": captions}
            if split is Split.VAL:
                entry = {"target": target, **entry}
            entries.append(entry)
        gallery.fill(per_category_gallery, in_category)
        gallery.write(root / "images", image_size)
        _write_json(root / "image_splits" / f"split.{category}.{split.value}.json", list(gallery.images))
        _write_json(root / "captions" / f"cap.{category}.{split.value}.json", entries)
        records.update(
            {image_id: {**record, "category": category} for image_id, record in gallery.records().items()}
        )
    _write_json(scenes_file(root, DatasetName.FASHIONIQ, split), {"images": records, "queries": described})


# --- entry point -------------------------------------------------------------------------------------------


def write_world_dataset(
    dataset: DatasetName | str,
    root: Path | str,
    split: Split | str = Split.VAL,
    *,
    gallery_size: int = DEFAULT_GALLERY_SIZE,
    num_queries: int = DEFAULT_NUM_QUERIES,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Path:
    """Write a heldout `dataset` `split` of the world under `root` in the official layout; returns `root`.

    The same arguments write byte-identical files.
    """
    name = DatasetName(str(dataset))
    which = Split(str(split))
    if num_queries < 1:
        raise ValueError(f"num_queries must be at least 1, got {num_queries}")
    if gallery_size < 1:
        raise ValueError(f"gallery_size must be at least 1, got {gallery_size}")
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    writer = {
        DatasetName.CIRCO: _write_circo,
        DatasetName.CIRR: _write_cirr,
        DatasetName.FASHIONIQ: _write_fashioniq,
    }
    writer[name](base, which, gallery_size, num_queries, seed, image_size)
    return base
