"""An unannotated image catalog from the world's train scenes: what InstructCIR's triplet job starts from.

A product catalog holds families of near-identical items (one dress in five colours); InstructCIR's paper
pairs images within such a meta-class (Fashion200k) or at random (NLVR). The catalog here has the same shape:
each family is a train scene and a few single-change variants of it. What the job may use is only the images
and, when asked, the family id as metadata (the analogue of a meta-class); no caption, edit text or scene is
written, so every text in the resulting triplets comes from the captioner and the LLM. The generator's own
texts for the base -> variant pairs go to a separate answer key (`ANSWER_KEY_NAME`), which only diagnostics
read: it tells how well InstructCIR learns when the triplet texts are right.

Only train scenes appear (a variant that falls in the heldout partition is drawn again), so nothing in the
catalog is ever evaluated. Seeded: the same arguments give byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cir_tools.world.corpus import RENDER_VARIANTS, TRAIN, is_heldout, sample_scene_in
from cir_tools.world.edits import sample_modification
from cir_tools.world.render import render
from cir_tools.world.scene import Scene

FAMILY_KEY = "family"
MANIFEST_NAME = "catalog.jsonl"
ANSWER_KEY_NAME = "answer_key.jsonl"

_MAX_VARIANT_DRAWS = 50


@dataclass(frozen=True)
class CatalogImage:
    image_id: str  # opaque: a digest, so that the name tells nothing about the scene
    family: str
    image: Image.Image
    change: str  # the generator's text from the family's base to this image; "" for the base itself


@dataclass(frozen=True)
class Variant:
    scene: Scene
    change: str  # the modification text from the family's base; "" for the base


def catalog_scenes(families: int, variants: int, seed: int) -> list[list[Variant]]:
    """`families` lists: a train scene, then up to `variants` distinct single-change variants of it."""
    if families < 1 or variants < 0:
        raise ValueError(f"families must be >= 1 and variants >= 0, got {families} and {variants}")
    rng = random.Random(seed)
    result: list[list[Variant]] = []
    for _ in range(families):
        base = sample_scene_in(TRAIN, rng)
        family = [Variant(base, "")]
        for _ in range(_MAX_VARIANT_DRAWS):
            if len(family) > variants:
                break
            modification = sample_modification(base, rng)
            target = modification.target
            if not is_heldout(target) and all(target != member.scene for member in family):
                family.append(Variant(target, modification.text))
        result.append(family)
    return result


def catalog_images(families: int, variants: int, seed: int, image_size: int = 64) -> list[CatalogImage]:
    rng = random.Random(seed + 1)
    images: list[CatalogImage] = []
    seen: set[str] = set()
    for index, family in enumerate(catalog_scenes(families, variants, seed)):
        family_id = f"f{index:05d}"
        for member in family:
            image = render(member.scene, size=image_size, variant=rng.randrange(RENDER_VARIANTS))
            image_id = _image_id(image)
            # Two families may draw the same scene and rendering: one copy, as a catalog would dedupe it.
            if image_id not in seen:
                seen.add(image_id)
                images.append(CatalogImage(image_id, family_id, image, member.change))
    return images


def write_catalog(out_dir: Path, families: int, variants: int, seed: int, image_size: int = 64) -> Path:
    """Writes `<id>.png` per image and a manifest (`id`, `file`, `metadata.family`); returns the manifest.

    The answer key beside it holds one line per base -> variant pair: `reference_id`, `target_id`, `text`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / MANIFEST_NAME
    lines, answers = [], []
    bases: dict[str, str] = {}
    for item in catalog_images(families, variants, seed, image_size):
        file_name = f"{item.image_id}.png"
        item.image.save(out_dir / file_name, format="PNG")
        record = {"id": item.image_id, "file": file_name, "metadata": {FAMILY_KEY: item.family}}
        lines.append(json.dumps(record))
        if not item.change:
            bases[item.family] = item.image_id
        elif item.family in bases:
            pair = {"reference_id": bases[item.family], "target_id": item.image_id, "text": item.change}
            answers.append(json.dumps(pair))
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / ANSWER_KEY_NAME).write_text("\n".join(answers) + "\n", encoding="utf-8")
    return manifest


def _image_id(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return hashlib.sha256(buffer.getvalue()).hexdigest()[:16]
