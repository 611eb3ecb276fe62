"""Captions: exact strings for one to three objects, and paraphrases that keep the facts."""

from __future__ import annotations

import random

from cir_tools.world.language import canonical_caption, paraphrases
from cir_tools.world.scene import Scene, WorldObject, sample_scene


def _scene(*objects: tuple[str, str, str, str], background: str = "gray", texture: str = "plain") -> Scene:
    return Scene.of([WorldObject(*item) for item in objects], background, texture)


def test_canonical_captions_for_one_two_and_three_objects() -> None:
    one = _scene(("circle", "red", "large", "center"), background="black", texture="plain")
    assert canonical_caption(one) == "a large red circle in the center on a plain black background"
    two = _scene(("square", "blue", "small", "right"), ("circle", "red", "large", "left"), texture="striped")
    assert canonical_caption(two) == (
        "a large red circle on the left and a small blue square on the right on a gray striped background"
    )
    three = _scene(
        ("star", "yellow", "small", "left"),
        ("triangle", "green", "large", "center"),
        ("square", "purple", "small", "right"),
        background="white",
        texture="dotted",
    )
    assert canonical_caption(three) == (
        "a small yellow star on the left, a large green triangle in the center and a small purple square "
        "on the right on a white dotted background"
    )


def test_paraphrases_spot_check() -> None:
    two = _scene(("circle", "red", "large", "left"), ("circle", "red", "small", "right"), background="brown")
    assert paraphrases(two) == [
        "a large red circle on the left and a small red circle on the right on a plain brown background",
        "there are a large red circle on the left and a small red circle on the right against a plain brown "
        "background",
        "a picture of a small red circle on the right and a large red circle on the left on a plain brown "
        "background",
        "two red circles on a plain brown background",
        "a plain brown background with a large red circle on the left and a small red circle on the right",
    ]
    one = _scene(("star", "orange", "small", "right"), texture="dotted")
    assert paraphrases(one)[1] == "there is a small orange star on the right against a gray dotted background"
    assert paraphrases(one)[3] == "an orange star on a gray dotted background"


def test_paraphrases_are_distinct_lower_case_and_canonical_first() -> None:
    rng = random.Random(3)
    for _ in range(300):
        scene = sample_scene(rng)
        captions = paraphrases(scene)
        assert captions[0] == canonical_caption(scene)
        assert len(captions) == len(set(captions)) >= 4
        for caption in captions:
            assert caption == caption.lower() and not caption.endswith(".") and "  " not in caption
            assert scene.background in caption
            for item in scene.objects:
                assert item.colour in caption and item.shape in caption
