"""Training data from the world, drawn only from the "train" partition of scenes.

Scenes are split once and for all into "train" (~80%) and "heldout" (~20%) by a stable hash of their canonical
caption (SHA-256, not Python's salted `hash()`), so the split is the same in every process. Trainers call the
functions here; the evaluation datasets (`world.datasets`) draw only heldout scenes, so no evaluated image or
text was ever trained on.

Every function takes a seed and draws from `random.Random(seed)` alone: the same arguments give the same data.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from PIL import Image

from cir_tools.world.edits import sample_modification
from cir_tools.world.language import canonical_caption, paraphrases
from cir_tools.world.render import render
from cir_tools.world.scene import Scene, sample_scene

__all__ = [
    "HELDOUT",
    "HELDOUT_FRACTION",
    "RENDER_VARIANTS",
    "TRAIN",
    "CaptionedImage",
    "EditExample",
    "caption_texts",
    "captioned_images",
    "edit_examples",
    "is_heldout",
    "partition_of",
    "sample_scene_in",
]

TRAIN = "train"
HELDOUT = "heldout"
HELDOUT_FRACTION = 0.2
# Training images use renderings 0..RENDER_VARIANTS-1 of a scene (0 is the exact layout, the rest jittered).
RENDER_VARIANTS = 4

_HASH_BUCKETS = 10_000
_MAX_DRAWS_PER_SCENE = 1_000


@dataclass(frozen=True)
class CaptionedImage:
    """An image of `scene` and its paraphrases (the canonical caption first)."""

    image: Image.Image
    captions: tuple[str, ...]
    scene: Scene


@dataclass(frozen=True)
class EditExample:
    """A text-only edit: the reference's paraphrases, the instruction, and the target's canonical caption."""

    reference_captions: tuple[str, ...]
    instruction: str
    target_caption: str
    added_objects: tuple[str, ...]
    kind: str


def partition_of(scene: Scene) -> str:
    """TRAIN or HELDOUT, fixed for a scene in every process and on every machine."""
    digest = hashlib.sha256(canonical_caption(scene).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % _HASH_BUCKETS
    return HELDOUT if bucket < HELDOUT_FRACTION * _HASH_BUCKETS else TRAIN


def is_heldout(scene: Scene) -> bool:
    return partition_of(scene) == HELDOUT


def sample_scene_in(partition: str, rng: random.Random) -> Scene:
    """A random scene of `partition` (rejection sampling from `sample_scene`)."""
    if partition not in (TRAIN, HELDOUT):
        raise ValueError(f"unknown partition {partition!r}")
    for _ in range(_MAX_DRAWS_PER_SCENE):
        scene = sample_scene(rng)
        if partition_of(scene) == partition:
            return scene
    raise RuntimeError(f"no {partition} scene in {_MAX_DRAWS_PER_SCENE} draws")


def captioned_images(count: int, seed: int, image_size: int = 64) -> list[CaptionedImage]:
    """`count` train scenes rendered at `image_size` (each a random rendering variant), with paraphrases."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        scene = sample_scene_in(TRAIN, rng)
        variant = rng.randrange(RENDER_VARIANTS)
        image = render(scene, size=image_size, variant=variant)
        examples.append(CaptionedImage(image=image, captions=tuple(paraphrases(scene)), scene=scene))
    return examples


def caption_texts(count: int, seed: int) -> list[str]:
    """`count` captions of train scenes, each a random paraphrase of its scene (for language models)."""
    rng = random.Random(seed)
    return [rng.choice(paraphrases(sample_scene_in(TRAIN, rng))) for _ in range(count)]


def edit_examples(count: int, seed: int) -> list[EditExample]:
    """`count` modifications whose reference and target are both train scenes, as texts."""
    rng = random.Random(seed)
    examples: list[EditExample] = []
    while len(examples) < count:
        reference = sample_scene_in(TRAIN, rng)
        modification = sample_modification(reference, rng)
        if is_heldout(modification.target):
            continue
        examples.append(
            EditExample(
                reference_captions=tuple(paraphrases(reference)),
                instruction=modification.text,
                target_caption=canonical_caption(modification.target),
                added_objects=modification.added,
                kind=modification.kind,
            )
        )
    return examples
