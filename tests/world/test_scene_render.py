"""Scenes and their images: valid, seeded, and objects drawn in their colour at their slot."""

from __future__ import annotations

import random

import pytest

from cir_tools.world.render import render
from cir_tools.world.scene import (
    BACKGROUNDS,
    COLOURS,
    MAX_OBJECTS,
    POSITIONS,
    Scene,
    WorldObject,
    sample_scene,
)


def _scene(*objects: tuple[str, str, str, str], background: str = "gray", texture: str = "plain") -> Scene:
    return Scene.of([WorldObject(*item) for item in objects], background, texture)


def _distance(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> int:
    return max(abs(a - b) for a, b in zip(pixel[:3], colour, strict=True))


def test_sample_scene_is_seeded_and_valid() -> None:
    first = [sample_scene(random.Random(7)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(2000)]
    counts = {len(scene.objects) for scene in scenes}
    assert counts == {1, 2, 3}
    for scene in scenes:
        slots = [POSITIONS.index(item.position) for item in scene.objects]
        assert slots == sorted(set(slots)) and len(slots) <= MAX_OBJECTS
        assert all(item.colour != scene.background for item in scene.objects)
    assert len(set(scenes)) > 1900  # a large world: draws rarely repeat


def test_scene_rejects_two_objects_in_one_slot_and_unknown_words() -> None:
    with pytest.raises(ValueError):
        _scene(("circle", "red", "large", "left"), ("square", "blue", "small", "left"))
    with pytest.raises(ValueError):
        WorldObject("hexagon", "red", "large", "left")
    with pytest.raises(ValueError):
        _scene(("circle", "red", "large", "left"), background="red")
    # Scene.of sorts into slot order, so the same objects in any order make equal scenes.
    a = _scene(("circle", "red", "large", "right"), ("square", "blue", "small", "left"))
    b = _scene(("square", "blue", "small", "left"), ("circle", "red", "large", "right"))
    assert a == b and [item.position for item in a.objects] == ["left", "right"]


def test_object_colours_and_backgrounds_never_collide() -> None:
    assert not set(COLOURS) & set(BACKGROUNDS)
    for name, colour in COLOURS.items():
        for background in BACKGROUNDS.values():
            assert _distance(colour, background) > 60, name


@pytest.mark.parametrize("size", [64, 32])
def test_objects_are_drawn_in_their_colour_at_their_slot(size: int) -> None:
    scene = _scene(
        ("circle", "red", "large", "left"),
        ("square", "blue", "small", "center"),
        ("star", "yellow", "large", "right"),
        background="black",
    )
    image = render(scene, size=size)
    assert image.size == (size, size) and image.mode == "RGB"
    middle = size // 2
    for item, column in zip(scene.objects, (size // 6, size // 2, 5 * size // 6), strict=True):
        assert _distance(image.getpixel((column, middle)), COLOURS[item.colour]) < 40, item
    # Between the objects and in the corners: the background.
    assert _distance(image.getpixel((1, 1)), BACKGROUNDS["black"]) < 10
    assert _distance(image.getpixel((middle, 2)), BACKGROUNDS["black"]) < 10


def test_empty_slots_show_the_background_and_small_objects_are_smaller() -> None:
    large = render(_scene(("square", "green", "large", "center"), background="white"))
    small = render(_scene(("square", "green", "small", "center"), background="white"))
    left_slot = (10, 32)
    assert _distance(large.getpixel(left_slot), BACKGROUNDS["white"]) < 10

    def green_pixels(image) -> int:  # type: ignore[no-untyped-def]
        return sum(1 for pixel in image.get_flattened_data() if _distance(pixel, COLOURS["green"]) < 40)

    assert green_pixels(large) > 2.5 * green_pixels(small) > 0


def test_textures_are_visible_and_keep_the_background_colour() -> None:
    def shades(texture: str) -> set[tuple[int, int, int]]:
        image = render(_scene(("circle", "red", "small", "center"), texture=texture))
        return {image.getpixel((x, 4)) for x in range(64)}

    assert shades("plain") == {BACKGROUNDS["gray"]}
    assert len(shades("striped")) > 2 and BACKGROUNDS["gray"] in shades("striped")
    assert len(shades("dotted")) > 2 and BACKGROUNDS["gray"] in shades("dotted")


def test_rendering_is_deterministic_and_variants_differ() -> None:
    scene = _scene(("triangle", "purple", "large", "left"), ("circle", "orange", "small", "right"))
    assert render(scene, variant=3).tobytes() == render(scene, variant=3).tobytes()
    renderings = {render(scene, variant=variant).tobytes() for variant in range(6)}
    assert len(renderings) == 6
    # A jittered rendering still shows each object's colour at its slot.
    image = render(scene, variant=5)
    assert _distance(image.getpixel((10, 32)), COLOURS["purple"]) < 40
